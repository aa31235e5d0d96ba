"""The demo's two pictures, drawn while its stages run (tools/demo.py):
demo_out/embedding.png (the test digits as the pretrained encoder, the raw
pixels and the random encoder see them) and demo_out/augmentations.png (what
pretraining sees). No flags are defined here, so that the tests can import
it beside the scripts'."""

import os
import sys

from absl import logging

from tools import console
from tools import experiment
from tools.experiment import AUGMENT, IMAGE_SIZE, TEST_SPLIT  # pylint: disable=g-multiple-import

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')


def draw_embedding(seed_dir, out, data_dir):
  """demo_out/embedding.png: the test digits as seen by the pretrained
  encoder, by the raw pixels and by the random encoder, side by side."""
  import simclr  # pylint: disable=g-import-not-at-top
  from simclr import data  # pylint: disable=g-import-not-at-top
  from simclr import features as features_lib  # pylint: disable=g-import-not-at-top
  from tf2 import show_embedding  # pylint: disable=g-import-not-at-top
  config = data.DataConfig(dataset='digits', data_dir=data_dir,
                           image_size=IMAGE_SIZE, eval_batch_size=400)
  panels = []
  for title, path in (('pretrained encoder (SimCLR)',
                       os.path.join(seed_dir, 'pretrain')),
                      ('random encoder', os.path.join(seed_dir,
                                                      'random_encoder'))):
    feature_set = features_lib.extract_features(simclr.load_model(path),
                                                config, TEST_SPLIT)
    panels.append((title, feature_set.features, feature_set.labels))
  _, pixels, labels = experiment.raw_pixels(data_dir, TEST_SPLIT)
  panels.insert(1, ('raw 8x8 pixels', pixels, labels))
  show_embedding.draw_embeddings(panels, os.path.join(out, 'embedding.png'))


def start_augmentations(out, data_dir):
  """Starts tf2/show_augmentations.py on the demo's augmentation settings,
  writing demo_out/augmentations.png, in a process of its own; returns it
  (a subprocess.Popen, its output in a temporary file, `.output`)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  augment_flags = [f'--{k}={v}' for k, v in AUGMENT.items()]
  output = tempfile.TemporaryFile()
  process = subprocess.Popen(
      [sys.executable, os.path.join(ROOT, 'tf2', 'show_augmentations.py'),
       '--out=' + os.path.join(out, 'augmentations.png'), '--dataset=digits',
       f'--image_size={IMAGE_SIZE}', f'--data_dir={data_dir}'] +
      augment_flags, stdin=subprocess.DEVNULL, stdout=output,
      stderr=subprocess.STDOUT)
  process.output = output
  return process


class Pictures:
  """The embedding and augmentation pictures, drawn while the stages still
  run instead of after them (about 13 s of a 2.5-minute demo on 2 cores):
  the augmentation picture in a process of its own once the first seed has
  prepared the dataset, the embedding in a thread of this process once the
  first seed's pretrained and random encoders are written. finish() waits
  for both (drawing what was not started yet) and says on the terminal
  which could not be drawn; the demo's table does not depend on them."""

  EMBEDDING_NEEDS = frozenset(['pretrain', 'random_linear_eval'])
  TIMEOUT_SECONDS = 300

  def __init__(self, out, data_dir, seed_dir, terminal):
    self.out = out
    self.data_dir = data_dir
    self.seed_dir = seed_dir
    self.terminal = terminal
    self.augmentations = None
    self.embedding = None
    self.errors = {}
    self.finished = set()

  def dataset_ready(self):
    if self.augmentations is None and 'augmentation' not in self.errors:
      try:
        self.augmentations = start_augmentations(self.out, self.data_dir)
      except Exception as e:  # pylint: disable=broad-except
        self.errors['augmentation'] = e

  def stage_done(self, name):
    self.finished.add(name)
    if self.embedding is None and self.EMBEDDING_NEEDS <= self.finished:
      import threading  # pylint: disable=g-import-not-at-top
      self.embedding = threading.Thread(target=self._draw_embedding,
                                        name='embedding picture', daemon=True)
      self.embedding.start()

  def _draw_embedding(self):
    try:
      draw_embedding(self.seed_dir, self.out, self.data_dir)
    except Exception as e:  # pylint: disable=broad-except
      logging.exception('embedding picture not drawn')
      self.errors['embedding'] = e

  def wait_for_embedding(self):
    if self.embedding is not None:
      self.embedding.join()

  def finish(self):
    """Waits for both pictures (starting what was not started) and says
    which could not be drawn."""
    import subprocess  # pylint: disable=g-import-not-at-top
    if self.embedding is None:
      self._draw_embedding()
    self.wait_for_embedding()
    self.dataset_ready()
    process = self.augmentations
    if process is not None:
      try:
        code = process.wait(timeout=self.TIMEOUT_SECONDS)
        if code:
          process.output.seek(0)
          text = process.output.read().decode(errors='replace').strip()
          logging.error('tf2/show_augmentations.py exited with %d:\n%s',
                        code, text)
          last = text.splitlines()[-1] if text else 'no output'
          self.errors['augmentation'] = RuntimeError(
              f'tf2/show_augmentations.py exited with {code}: {last}')
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        self.errors['augmentation'] = RuntimeError(
            f'tf2/show_augmentations.py did not finish in '
            f'{self.TIMEOUT_SECONDS} s')
      process.output.close()
      self.augmentations = None
    for name in ('embedding', 'augmentation'):
      if name in self.errors:
        self.terminal.say(f'{name} picture not drawn: '
                          f'{console.one_line(self.errors[name])}')

  def cancel(self):
    """Stops the augmentation picture's process if it still runs (the demo
    stopped early)."""
    process = self.augmentations
    if process is not None and process.poll() is None:
      process.kill()
      process.wait()
