"""The notebooks in colabs/ run top to bottom, offline, without a cell error.

They share one working directory (SIMCLR_COLAB_DIR), so the small model the
first one trains is reused by the others, as a user's session would. Each
training runs SIMCLR_COLAB_STEPS=6 steps instead of the notebooks' 60: the
test checks that every cell runs, not what 60 steps reach."""

import os

import nbformat
from nbclient import NotebookClient
import pytest

COLABS = os.path.join(os.path.dirname(__file__), '..', 'colabs')
NOTEBOOKS = ['load_and_inference.ipynb', 'finetuning.ipynb',
             'distillation_self_training.ipynb']


@pytest.fixture(scope='module')
def colab_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('colabs'))


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_runs_offline_top_to_bottom(name, colab_dir, monkeypatch):
  monkeypatch.setenv('SIMCLR_COLAB_DIR', colab_dir)
  monkeypatch.setenv('SIMCLR_COLAB_STEPS', '6')
  monkeypatch.setenv('TF_CPP_MIN_LOG_LEVEL', '2')
  monkeypatch.setenv('MPLBACKEND', 'Agg')
  notebook = nbformat.read(os.path.join(COLABS, name), as_version=4)
  client = NotebookClient(notebook, timeout=900, kernel_name='python3',
                          resources={'metadata': {'path': COLABS}})
  client.execute()  # raises CellExecutionError on the first failing cell
  outputs = [o for cell in notebook.cells if cell.cell_type == 'code'
             for o in cell.get('outputs', [])]
  assert not [o for o in outputs if o.get('output_type') == 'error']
  text = ''.join(o.get('text', '') for o in outputs)
  assert 'top-1' in text
