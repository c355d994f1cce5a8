"""`deploy/` (Kubernetes and Slurm templates) and `kerasft.cluster`, which prints the
TF_CONFIG the templates' workers train with (a real 2-worker run from its output is in
test_distribute.py)."""

import importlib
import json
import os
import re

import pytest
import yaml
from absl import flags

from conftest import REPO, call_main
from kerasft import cluster
from kerasft.core.errors import UsageError

DEPLOY = os.path.join(REPO, "deploy")


def _commands(text):
  """{module: [--flag=value, ...]} of every `python -m kerasft.X` in a template's text."""
  text = re.sub(r"\\\n|\\|\"|\)", " ", text)  # line continuations, escapes, quotes, $(...)
  found = {}
  for match in re.finditer(r"python -m (kerasft\.\w+)((?:\s+--\S+)*)", text):
    found.setdefault(match.group(1), []).extend(match.group(2).split())
  return found


def _tfjob_command(doc):
  container = doc["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
  return " ".join(container["command"])


def _templates():
  job = list(yaml.safe_load_all(open(os.path.join(DEPLOY, "kubernetes", "job.yaml"))))
  tfjob = list(yaml.safe_load_all(open(os.path.join(DEPLOY, "kubernetes", "tfjob.yaml"))))
  slurm = open(os.path.join(DEPLOY, "slurm", "train.sbatch")).read()
  container = job[1]["spec"]["template"]["spec"]["containers"][0]
  return {"job.yaml": " ".join(container["command"] + container["args"]),
          "tfjob.yaml": _tfjob_command(tfjob[0]), "train.sbatch": slurm}, job, tfjob, slurm


def test_templates_parse_and_agree_with_themselves():
  _, job, tfjob, slurm = _templates()
  service, indexed = job
  assert (service["kind"], indexed["kind"], tfjob[0]["kind"]) == ("Service", "Job", "TFJob")
  assert service["spec"]["clusterIP"] == "None"  # headless: one DNS name per pod
  spec = indexed["spec"]
  assert spec["completionMode"] == "Indexed"
  assert spec["template"]["spec"]["subdomain"] == service["metadata"]["name"]
  assert service["spec"]["selector"] == {"job-name": indexed["metadata"]["name"]}
  args = dict(a.split("=", 1) for a in _commands(_templates()[0]["job.yaml"])
              ["kerasft.cluster"])
  assert args["--hosts"] == (f"{indexed['metadata']['name']}-{{i}}."
                             f"{service['metadata']['name']}:2222")
  assert int(args["--workers"]) == spec["completions"] == spec["parallelism"]
  assert spec["template"]["spec"]["restartPolicy"] == "OnFailure"
  assert tfjob[0]["spec"]["tfReplicaSpecs"]["Worker"]["restartPolicy"] == "OnFailure"
  assert "#SBATCH --requeue" in slurm and "#SBATCH --ntasks-per-node=1" in slurm


@pytest.mark.parametrize("name", ["job.yaml", "tfjob.yaml", "train.sbatch"])
def test_templates_name_only_flags_the_command_line_accepts(name):
  commands = _commands(_templates()[0][name])
  assert "kerasft.train" in commands
  train = dict(a.split("=", 1) for a in commands["kerasft.train"])
  assert train["--strategy"] == "multi_worker"
  assert train["--model_dir"].endswith("/runs/fashion")  # shared by every worker
  for module, args in commands.items():
    importlib.import_module(module)  # defines its flags
    for arg in args:
      flag, _, value = arg[2:].partition("=")
      assert flag in flags.FLAGS, f"{name}: {module} has no --{flag}"
      if "$" not in value and "{i}" not in value:
        flags.FLAGS[flag]._parse(value)  # a value its flag refuses raises  # pylint: disable=protected-access


def test_cluster_prints_tf_config_from_a_pattern_or_a_list():
  run = call_main("cluster", "--hosts=kerasft-train-{i}.kerasft-train:2222", "--workers=3",
                  "--index=2")
  assert run.returncode == 0, run.stderr
  assert json.loads(run.stdout) == {
      "cluster": {"worker": [f"kerasft-train-{i}.kerasft-train:2222" for i in range(3)]},
      "task": {"type": "worker", "index": 2}}
  assert cluster.hosts("a:1, b:2") == ["a:1", "b:2"]
  assert cluster.worker_index(None, {"JOB_COMPLETION_INDEX": "1"}) == 1
  assert cluster.worker_index(None, {"SLURM_PROCID": "3"}) == 3
  assert cluster.worker_index(0, {"SLURM_PROCID": "3"}) == 0


@pytest.mark.parametrize("args, message", [
    ([], "--hosts:"),
    (["--hosts=a:{i}"], "--hosts, --workers:"),
    (["--hosts=a:1,b:2", "--workers=2"], "--hosts, --workers:"),
    (["--hosts=a:1,b", "--index=0"], "--hosts: 'b' is not host:port"),
    (["--hosts=a:1,b:2", "--index=2"], "--index: 2 is not a worker of 2"),
    (["--hosts=a:1,b:2"], "--index: pass this worker's index"),
])
def test_cluster_mistakes_are_one_line(args, message, monkeypatch):
  for name in cluster.INDEX_VARIABLES:
    monkeypatch.delenv(name, raising=False)
  run = call_main("cluster", *args)
  assert run.returncode == 2, run.stderr
  assert run.stderr.strip().splitlines()[-1].startswith(f"error: {message}")


def test_tf_config_is_what_tensorflows_resolver_reads(monkeypatch):
  import tensorflow as tf
  monkeypatch.setenv("TF_CONFIG", cluster.tf_config(["h0:2222", "h1:2222"], 1))
  resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
  assert resolver.cluster_spec().as_dict() == {"worker": ["h0:2222", "h1:2222"]}
  assert (resolver.task_type, resolver.task_id) == ("worker", 1)
