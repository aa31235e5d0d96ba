"""Weighted k-NN evaluation (simclr/knn.py) against scikit-learn's cosine
neighbours and a numpy vote; k-NN while pretraining (--knn_eval_steps); the
command line tf2/knn_eval.py."""

import glob
import json
import os

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neighbors import NearestNeighbors
import tensorflow as tf
import tensorflow_datasets as tfds

import simclr
from simclr import knn
from simclr.configs import ModelConfig

import script_runner  # tests/script_runner.py

ROOT = os.path.join(os.path.dirname(__file__), '..')
NUM_CLASSES = 10


def clustered(num_bank, num_queries, num_classes=NUM_CLASSES, dim=32,
              noise=2.5, seed=0):
  """Bank and queries drawn around one random centre per class (noisy
  enough that neighbours of other classes take part in the votes)."""
  rng = np.random.RandomState(seed)
  centres = rng.randn(num_classes, dim)

  def draw(n):
    labels = rng.randint(0, num_classes, n)
    return centres[labels] + noise * rng.randn(n, dim), labels

  return draw(num_bank) + draw(num_queries)


def numpy_knn(similarities, neighbours, bank_labels, query_labels, k,
              temperature, num_classes):
  """(top-1, top-5) of the weighted vote exp(s / T) over given neighbours
  [Q, >= k] (most similar first), ties to the lower class index."""
  votes = np.zeros([len(neighbours), num_classes])
  for row, (sims, rows) in enumerate(zip(similarities, neighbours)):
    np.add.at(votes[row], bank_labels[rows[:k]],
              np.exp(np.asarray(sims[:k], np.float64) / temperature))
  ranked = np.argsort(-votes, axis=1, kind='stable')[:, :min(5, num_classes)]
  top1 = np.mean(ranked[:, 0] == query_labels)
  top5 = np.mean(np.any(ranked == query_labels[:, None], axis=1))
  return top1, top5


def sklearn_neighbours(bank, queries, k):
  """(cosine similarities, bank rows) of each query's k nearest bank rows."""
  distances, rows = NearestNeighbors(
      n_neighbors=k, metric='cosine', algorithm='brute').fit(bank).kneighbors(
          queries)
  return 1 - distances, rows


def test_neighbours_are_the_k_most_cosine_similar_bank_rows():
  bank, bank_labels, queries, _ = clustered(400, 70)
  predictions = knn.KnnClassifier(bank, bank_labels, k=25).predict(queries)
  expected_similarities, expected_rows = sklearn_neighbours(bank, queries, 25)
  np.testing.assert_array_equal(np.sort(predictions.neighbours, axis=1),
                                np.sort(expected_rows, axis=1))
  np.testing.assert_allclose(predictions.similarities, expected_similarities,
                             atol=1e-5)


def test_accuracies_are_those_of_the_exp_similarity_weighted_vote():
  bank, bank_labels, queries, query_labels = clustered(600, 150)
  result = knn.knn_evaluate(bank, bank_labels, queries, query_labels, k=40,
                            temperature=0.1, batch_size=32)
  top1, top5 = numpy_knn(*sklearn_neighbours(bank, queries, 40), bank_labels,
                         query_labels, 40, 0.1, NUM_CLASSES)
  assert 0.2 < top1 < top5 < 1  # The data leave room for both to differ.
  assert result.top_1_accuracy == pytest.approx(top1, abs=1e-12)
  assert result.top_5_accuracy == pytest.approx(top5, abs=1e-12)
  assert (result.k, result.num_bank, result.num_queries) == (40, 600, 150)


def test_two_replicas_split_the_queries_and_agree_with_numpy(
    two_replica_strategy):
  # 157 queries in batches of 2 x 16: the last global batch is padded.
  bank, bank_labels, queries, query_labels = clustered(500, 157, seed=1)
  result = knn.knn_evaluate(bank, bank_labels, queries, query_labels, k=30,
                            temperature=0.07, batch_size=16,
                            strategy=two_replica_strategy)
  top1, top5 = numpy_knn(*sklearn_neighbours(bank, queries, 30), bank_labels,
                         query_labels, 30, 0.07, NUM_CLASSES)
  assert result.top_1_accuracy == pytest.approx(top1, abs=1e-12)
  assert result.top_5_accuracy == pytest.approx(top5, abs=1e-12)


def test_a_tiny_temperature_leaves_the_vote_to_the_nearest_neighbour():
  # exp(s / 1e-4) overflows float32 unless the votes are rescaled.
  bank, bank_labels, queries, query_labels = clustered(300, 90, seed=2)
  result = knn.knn_evaluate(bank, bank_labels, queries, query_labels, k=20,
                            temperature=1e-4)
  nearest = KNeighborsClassifier(n_neighbors=1, metric='cosine',
                                 algorithm='brute').fit(bank, bank_labels)
  assert result.top_1_accuracy == pytest.approx(
      nearest.score(queries, query_labels), abs=1e-12)


def test_top_5_covers_every_class_when_there_are_fewer_than_five():
  bank, bank_labels, queries, query_labels = clustered(200, 50, num_classes=3)
  classifier = knn.KnnClassifier(bank, bank_labels, k=10)
  assert classifier.predict(queries).classes.shape == (50, 3)
  assert classifier.evaluate(queries, query_labels).top_5_accuracy == 1.0


def test_leave_one_out_never_counts_a_query_as_its_own_neighbour():
  bank, bank_labels, _, _ = clustered(300, 1, seed=3)
  predictions = knn.KnnClassifier(bank, bank_labels, k=15).predict(
      bank, leave_one_out=True)
  # scikit-learn's kneighbors() without queries leaves each point out.
  _, expected = NearestNeighbors(n_neighbors=15, metric='cosine',
                                 algorithm='brute').fit(bank).kneighbors()
  np.testing.assert_array_equal(np.sort(predictions.neighbours, axis=1),
                                np.sort(expected, axis=1))


def test_a_replaced_bank_is_the_one_queried(two_replica_strategy):
  first, first_labels, queries, query_labels = clustered(400, 90, seed=4)
  second, second_labels, _, _ = clustered(400, 1, seed=5)
  classifier = knn.KnnClassifier(first, first_labels, k=25, batch_size=16,
                                 strategy=two_replica_strategy)
  classifier.evaluate(queries, query_labels)
  classifier.set_bank(second, second_labels)
  result = classifier.evaluate(queries, query_labels)
  top1, top5 = numpy_knn(*sklearn_neighbours(second, queries, 25),
                         second_labels, query_labels, 25, 0.1, NUM_CLASSES)
  assert result.top_1_accuracy == pytest.approx(top1, abs=1e-12)
  assert result.top_5_accuracy == pytest.approx(top5, abs=1e-12)


def test_k_larger_than_the_bank_is_refused():
  bank, bank_labels, _, _ = clustered(50, 1)
  with pytest.raises(ValueError, match=r'k=51: expected 1 <= k <= 50'):
    knn.KnnClassifier(bank, bank_labels, k=51)


# -- with a model on the embedded digits -------------------------------------


def digits_arrays(data_dir, split):
  """(images float32 [N, 32, 32, 3] in [0, 1], labels [N]) read with TFDS
  itself (32x32: the evaluation preprocessing only converts to float)."""
  dataset = tfds.builder('digits', data_dir=data_dir).as_dataset(split=split)
  images, labels = [], []
  for example in tfds.as_numpy(dataset.batch(512)):
    images.append(tf.image.convert_image_dtype(example['image'],
                                               tf.float32).numpy())
    labels.append(example['label'])
  return np.concatenate(images), np.concatenate(labels)


# Features computed in another process or batch layout differ in float32
# round-off; early in training final_avg_pool rows are nearly parallel
# (cosines ~0.998, neighbours 1e-5 apart), so such round-off can move one
# query's neighbours at a near tie.
ONE_QUERY = 1.01 / 359


def numpy_knn_of_model(model, data_dir, output_key='final_avg_pool', k=200,
                       temperature=0.1):
  """(top-1, top-5) of the weighted k-NN of the model's output_key
  (flattened), the train split the bank and the test split the queries,
  computed with scikit-learn and numpy from the model's outputs."""
  outputs = {}
  for split in ('train', 'test'):
    images, labels = digits_arrays(data_dir, split)
    features = np.concatenate([
        model(images[i:i + 256], training=False)[output_key].numpy().reshape(
            len(images[i:i + 256]), -1)
        for i in range(0, len(images), 256)])
    outputs[split] = features, labels
  (bank, bank_labels), (queries, query_labels) = outputs['train'], outputs[
      'test']
  return numpy_knn(*sklearn_neighbours(bank, queries, k), bank_labels,
                   query_labels, k, temperature, NUM_CLASSES)


def test_pretraining_reports_the_knn_accuracy_of_its_final_model(
    shared_pretrain, digits_dir):
  # The suite's shared run (conftest.SHARED_PRETRAIN_FLAGS): 6 steps on two
  # replicas with --knn_eval_steps=3.
  model_dir = shared_pretrain[0]
  top1, top5 = numpy_knn_of_model(simclr.load_model(model_dir), digits_dir)
  for name in ('result.json', 'train_metrics.json'):
    with open(os.path.join(model_dir, name)) as f:
      reported = json.load(f)
    assert reported[knn.TOP1_METRIC] == pytest.approx(top1, abs=ONE_QUERY)
    assert reported[knn.TOP5_METRIC] == pytest.approx(top5, abs=ONE_QUERY)
  # TensorBoard: after step 3 (the multiple of 3) and step 6 (the last).
  steps = []
  for path in glob.glob(os.path.join(model_dir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      steps += [event.step for value in event.summary.value
                if value.tag == knn.TOP1_METRIC]
  assert sorted(steps) == [3, 6]


def write_model(directory):
  """A randomly initialised ResNet-18 (0.25x) for 32x32 images, saved as our
  checkpoint with its model_config.json; returns the checkpoint prefix."""
  model = simclr.build_model(ModelConfig(resnet_depth=18, width_multiplier=0.25,
                                         image_size=32, num_classes=10))
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'model_config.json'), 'w') as f:
    f.write(model.config.to_json())
  prefix = simclr.checkpoints.training_checkpoint(model).write(
      os.path.join(directory, 'ckpt-0'))
  return prefix, model


def run_script(args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  return script_runner.shared().run(os.path.join(ROOT, 'tf2', 'knn_eval.py'),
                                    args, timeout=300, env=env, cwd=ROOT)


def test_knn_eval_writes_the_numpy_knn_of_the_checkpoint(digits_dir,
                                                         tmp_path):
  checkpoint, model = write_model(str(tmp_path / 'model'))
  out = tmp_path / 'knn.json'
  proc = run_script([f'--checkpoint={checkpoint}', '--dataset=digits',
                     f'--data_dir={digits_dir}', '--eval_split=test',
                     '--output_key=block_group4', f'--out={out}'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  written = json.loads(out.read_text())
  assert json.loads(proc.stdout) == written
  top1, top5 = numpy_knn_of_model(model, digits_dir, 'block_group4')
  assert written['top_1_accuracy'] == pytest.approx(top1, abs=ONE_QUERY)
  assert written['top_5_accuracy'] == pytest.approx(top5, abs=ONE_QUERY)
  assert (written['num_bank'], written['num_queries'], written['k'],
          written['temperature']) == (1438, 359, 200, 0.1)


@pytest.mark.parametrize('flag, args', [
    ('k', ['--k=1439']),
    ('checkpoint', ['--checkpoint={tmp}']),
])
def test_knn_eval_bad_input_is_one_line_naming_the_flag(
    flag, args, digits_dir, tmp_path):
  checkpoint, _ = write_model(str(tmp_path / 'model'))
  args = [a.format(tmp=tmp_path) for a in args]
  proc = run_script([f'--checkpoint={checkpoint}', '--dataset=digits',
                     f'--data_dir={digits_dir}', '--eval_split=test'] + args)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith(f'error: --{flag}'), proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
