"""Choosing the tf.distribute strategy: TPU, several GPUs, a multi-worker
cluster (TF_CONFIG), or the CPU (optionally split into logical devices so that
multi-replica code paths run on a CPU-only machine)."""

import json
import os

from absl import logging
import tensorflow as tf

from simclr.configs import StrategyConfig


def split_cpu(num_devices: int):
  """Splits the first physical CPU into `num_devices` logical devices. Must
  run before TensorFlow initialises its devices (before any op)."""
  cpu = tf.config.list_physical_devices('CPU')[0]
  existing = tf.config.get_logical_device_configuration(cpu)
  if existing and len(existing) == num_devices:
    return
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)


def _cluster_workers() -> int:
  spec = json.loads(os.environ.get('TF_CONFIG', '{}') or '{}')
  cluster = spec.get('cluster', {})
  return len(cluster.get('worker', [])) + len(cluster.get('chief', []))


def _tpu_strategy(config: StrategyConfig):
  if config.tpu_name:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        config.tpu_name, zone=config.tpu_zone, project=config.gcp_project)
  elif config.master:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(config.master)
  else:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver('local')
  tf.config.experimental_connect_to_cluster(resolver)
  topology = tf.tpu.experimental.initialize_tpu_system(resolver)
  logging.info('TPU topology: %d tasks, %d TPUs per task', topology.num_tasks,
               topology.num_tpus_per_task)
  return tf.distribute.TPUStrategy(resolver)


def build_strategy(config: StrategyConfig) -> tf.distribute.Strategy:
  """Returns the strategy to train under.

  'auto': TPUStrategy when use_tpu and a TPU is named (tpu_name, master) or
  attached to this host; with use_tpu but no TPU (the published default on a
  GPU/CPU machine) a warning, then: MultiWorkerMirroredStrategy when TF_CONFIG
  describes several workers, MirroredStrategy over the local GPUs when there
  are several or over num_logical_cpus logical CPUs when asked, and the single
  GPU/CPU otherwise.
  """
  kind = config.strategy
  if config.num_logical_cpus > 1:
    split_cpu(config.num_logical_cpus)
  if kind == 'tpu' or (kind == 'auto' and config.use_tpu):
    # Only a named TPU, a master address or TPU devices on this host are
    # tried: a nameless resolver would query the cloud metadata server.
    explicit = kind == 'tpu' or config.tpu_name or config.master
    if explicit or tf.config.list_physical_devices('TPU'):
      try:
        return _tpu_strategy(config)
      except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise ValueError(
            f'--use_tpu: could not reach the TPU '
            f'{config.tpu_name or config.master or "(local)"}: {e}') from None
    else:
      logging.warning('--use_tpu is on (the published default) but no TPU '
                      'was found; running on %s instead. Pass '
                      '--use_tpu=false to silence this.',
                      'GPU' if tf.config.list_physical_devices('GPU')
                      else 'CPU')
  if kind == 'multi_worker' or (kind == 'auto' and _cluster_workers() > 1):
    return tf.distribute.MultiWorkerMirroredStrategy()
  gpus = tf.config.list_logical_devices('GPU')
  cpus = tf.config.list_logical_devices('CPU')
  if kind == 'cpu':
    return tf.distribute.OneDeviceStrategy(cpus[0].name)
  if gpus and (len(gpus) > 1 or kind == 'mirrored'):
    return tf.distribute.MirroredStrategy([d.name for d in gpus])
  if not gpus and (config.num_logical_cpus > 1 or kind == 'mirrored'):
    return tf.distribute.MirroredStrategy(
        [d.name for d in cpus[:max(config.num_logical_cpus, 1)]])
  device = gpus[0].name if gpus else cpus[0].name
  return tf.distribute.OneDeviceStrategy(device)


def agree_on_read_variables(variables, strategy: tf.distribute.Strategy):
  """Gives every replica the cross-replica mean of each of `variables` that
  is read that way: batch norm's moving statistics (on-read variables, mean
  aggregation). Without synchronised batch norm (--global_bn=False) each
  replica updates its own copy while training, and a checkpoint or export
  stores their mean; an evaluation inside the run (k-NN, eval at the end)
  runs on the replicas, each reading its own copy, so it evaluated another
  model than the one saved. Called before such an evaluation; the replicas
  go on training from the mean. Nothing to do on one replica."""
  if strategy.num_replicas_in_sync < 2:
    return
  with strategy.scope():
    for variable in variables:
      if (isinstance(variable, tf.distribute.DistributedValues) and
          variable.synchronization == tf.VariableSynchronization.ON_READ and
          variable.aggregation == tf.VariableAggregation.MEAN):
        variable.assign(variable.read_value())
