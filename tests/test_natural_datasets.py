"""Natural-image few-shot datasets by name: tiny_imagenet, cifar_fs, fc100, mini_imagenet,
tiered_imagenet, cub.

Each is loaded from generated files in its real layout (or TFDS mock data),
through `registry.load_split` where a user would; the class splits are
pinned against the published lists; bad input names its fix.
"""

import io
import os
import pickle
import time
import zipfile

import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from fsl_jax.data import cifar, cub, mini_imagenet, registry, tiny_imagenet
from fsl_jax.data.sources import DataError


def _cfg(name, **kw):
  """A config.data as the trainer passes it (image_size 0: the dataset's default)."""
  base = dict(name=name, data_dir="", image_size=0, cache_dir="", grayscale=False,
              skip_bad_images=False, download=False)
  return ml_collections.ConfigDict({**base, **kw})


def _solid(rng, h, w):
  """A distinct smooth RGB image: a random colour plus a gentle ramp."""
  base = rng.integers(30, 220, 3)
  ramp = np.linspace(-20, 20, w)[None, :, None]
  return np.clip(base[None, None] + ramp + np.zeros((h, 1, 1)), 0, 255).astype(np.uint8)


def _encode(img, fmt="JPEG"):
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
  return buf.getvalue()


# --- tiny_imagenet ------------------------------------------------------------------------

def test_tiny_imagenet_split_lists_are_pinned():
  train, val, test = (tiny_imagenet.TRAIN_WNIDS, tiny_imagenet.VAL_WNIDS,
                      tiny_imagenet.TEST_WNIDS)
  assert (len(train), len(val), len(test)) == (120, 40, 40)
  union = set(train) | set(val) | set(test)
  assert len(union) == 200  # disjoint
  assert all(list(s) == sorted(s) for s in (train, val, test))
  # The rule the module's comment states reproduces the lists from the 200 wnids.
  perm = [str(w) for w in np.random.default_rng(0).permutation(sorted(union))]
  assert (tuple(sorted(perm[:120])), tuple(sorted(perm[120:160])),
          tuple(sorted(perm[160:]))) == (train, val, test)
  assert tiny_imagenet.split_wnids("trainval") == tuple(sorted(train + val))
  with pytest.raises(DataError, match="choose one of"):
    tiny_imagenet.split_wnids("novel")


def _tiny_tree(rng, classes, per_class=3):
  """{member path: bytes} of a small tiny-imagenet-200 in the official layout."""
  files = {"tiny-imagenet-200/wnids.txt": "\n".join(classes).encode(),
           "tiny-imagenet-200/words.txt": "\n".join(f"{w}\tthing {i}, a thing" for i, w in
                                                    enumerate(classes)).encode(),
           "tiny-imagenet-200/val/val_annotations.txt": b"val_0.JPEG\tn01443537\t0\t0\t9\t9\n",
           "tiny-imagenet-200/val/images/val_0.JPEG": _encode(_solid(rng, 64, 64))}
  for w in classes:
    files[f"tiny-imagenet-200/train/{w}/{w}_boxes.txt"] = b"0\t0\t63\t63\n"
    for i in range(per_class):
      files[f"tiny-imagenet-200/train/{w}/images/{w}_{i}.JPEG"] = _encode(_solid(rng, 64, 64))
  return files


def test_tiny_imagenet_zip_and_folder_give_identical_arrays(tmp_path):
  classes = [tiny_imagenet.TRAIN_WNIDS[0], tiny_imagenet.TRAIN_WNIDS[5],
             tiny_imagenet.VAL_WNIDS[0], tiny_imagenet.TEST_WNIDS[3]]
  files = _tiny_tree(np.random.default_rng(0), classes)
  zpath = tmp_path / "tiny-imagenet-200.zip"
  with zipfile.ZipFile(zpath, "w") as zf:
    for name, data in files.items():
      zf.writestr(name, data)
  unpacked = tmp_path / "unpacked"
  for name, data in files.items():
    (unpacked / name).parent.mkdir(parents=True, exist_ok=True)
    (unpacked / name).write_bytes(data)

  from_zip = registry.load_split(_cfg("tiny_imagenet", data_dir=str(zpath)), "train")
  from_folder = tiny_imagenet.load_tiny_imagenet("train", str(unpacked))  # holds the folder
  assert from_zip.class_names == sorted(classes[:2]) == from_folder.class_names
  assert from_zip.images.dtype == np.uint8 and from_zip.images.shape == (2, 3, 64, 64, 3)
  np.testing.assert_array_equal(from_zip.images, from_folder.images)
  np.testing.assert_array_equal(from_zip.counts, [3, 3])
  assert from_zip.groups is None
  # Decoded pixels are the training JPEG's (not the val image's).
  w = classes[0]
  jpeg = files[f"tiny-imagenet-200/train/{w}/images/{w}_0.JPEG"]
  np.testing.assert_array_equal(from_zip.images[0, 0], np.asarray(Image.open(io.BytesIO(jpeg))))

  val = tiny_imagenet.load_tiny_imagenet("val", str(unpacked / "tiny-imagenet-200"), 84)
  assert val.class_names == [classes[2]] and val.images.shape == (1, 3, 84, 84, 3)
  gray = tiny_imagenet.load_tiny_imagenet("test", str(zpath), grayscale=True)
  assert gray.class_names == [classes[3]] and gray.images.shape == (1, 3, 64, 64, 1)
  assert tiny_imagenet.class_words(str(zpath))[classes[1]] == "thing 1, a thing"
  assert tiny_imagenet.class_words(str(unpacked)) == tiny_imagenet.class_words(str(zpath))


def test_tiny_imagenet_bad_input_names_the_fix(tmp_path):
  with pytest.raises(DataError, match=r"data_dir.*tiny-imagenet-200\.zip.*cs231n"):
    registry.load_split(_cfg("tiny_imagenet"), "train")
  with pytest.raises(DataError, match="holds neither tiny-imagenet-200.zip"):
    tiny_imagenet.load_tiny_imagenet("train", str(tmp_path))
  # A zip of other classes: none of the split's wnids.
  zpath = tmp_path / "tiny-imagenet-200.zip"
  with zipfile.ZipFile(zpath, "w") as zf:
    for name, data in _tiny_tree(np.random.default_rng(1), ["n99999999"], 1).items():
      zf.writestr(name, data)
  with pytest.raises(DataError, match=r"No images .*train/<wnid>/images/\*\.JPEG"):
    tiny_imagenet.load_tiny_imagenet("test", str(zpath))


def test_tiny_imagenet_real_subset(shared_dir, tmp_path):
  zpath = shared_dir / "data" / "images" / "tiny-imagenet-200.zip"
  shapes, names, seconds = {}, [], {}
  for split in ("train", "val", "test"):
    t0 = time.perf_counter()
    src = tiny_imagenet.load_tiny_imagenet(split, str(zpath), cache_dir=str(tmp_path))
    seconds[split] = round(time.perf_counter() - t0, 2)
    shapes[split] = (src.images.shape, src.images.dtype)
    names += src.class_names
    assert (src.counts == 80).all()
  print("tiny_imagenet real subset, first load (s):", seconds)
  assert shapes == {"train": ((120, 80, 64, 64, 3), np.uint8),
                    "val": ((40, 80, 64, 64, 3), np.uint8),
                    "test": ((40, 80, 64, 64, 3), np.uint8)}
  with zipfile.ZipFile(zpath) as zf:
    assert sorted(names) == sorted(zf.read("tiny-imagenet-200/wnids.txt").decode().split())
  t0 = time.perf_counter()
  again = tiny_imagenet.load_tiny_imagenet("test", str(zpath), cache_dir=str(tmp_path))
  print(f"tiny_imagenet test split from the cache: {time.perf_counter() - t0:.2f} s")
  assert isinstance(again.images, np.memmap) and again.images.shape == (40, 80, 64, 64, 3)
  assert tiny_imagenet.class_words(str(zpath))["n01443537"].startswith("goldfish")


# --- cifar_fs / fc100 --------------------------------------------------------------------

def test_cifar_split_lists_are_the_published_ones():
  assert len(cifar.FINE_NAMES) == 100 and len(set(cifar.FINE_NAMES)) == 100
  assert len(cifar.SUPERCLASSES) == 20
  assert all(len(v) == 5 for v in cifar.SUPERCLASSES.values())
  fs = [cifar.split_classes("cifar_fs", s) for s in ("train", "val", "test")]
  assert [len(x) for x in fs] == [64, 16, 20]
  assert sorted(sum(fs, ())) == list(cifar.FINE_NAMES)
  assert len(cifar.FC100_TRAIN + cifar.FC100_VAL + cifar.FC100_TEST) == 20
  assert set(cifar.FC100_TRAIN + cifar.FC100_VAL + cifar.FC100_TEST) == set(cifar.SUPERCLASSES)
  # TADAM's coarse-label ids (superclasses in CIFAR-100's order).
  order = list(cifar.SUPERCLASSES)
  assert sorted(order.index(s) for s in cifar.FC100_VAL) == [8, 11, 13, 16]
  assert sorted(order.index(s) for s in cifar.FC100_TEST) == [0, 7, 12, 14]


@pytest.fixture
def no_prepared_tfds(tmp_path, monkeypatch):
  """TFDS_DATA_DIR without prepared data: mock_data is read, and nothing is cached."""
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))


def _mock_labels(name, n):
  ds = tfds.data_source(name, split="train")
  return [int(ds[i]["label"]) for i in range(n)], ds


@pytest.mark.parametrize("dataset,sizes,supers", [("cifar_fs", (64, 16, 20), None),
                                                  ("fc100", (60, 20, 20), (12, 4, 4))])
def test_cifar_fewshot_under_mock_data(dataset, sizes, supers, no_prepared_tfds):
  n = 600  # the mock's deterministic labels cover all 100 classes at 600 examples
  with tfds.testing.mock_data(num_examples=n, policy=tfds.testing.MockPolicy.USE_CODE):
    t0 = time.perf_counter()
    splits = {s: registry.load_split(_cfg(dataset), s) for s in ("train", "val", "test")}
    print(f"{dataset} under mock_data, 3 splits: {time.perf_counter() - t0:.2f} s")
    labels, ds = _mock_labels("cifar100", n)
    wider = cifar.load_cifar100_fewshot(dataset, "test", image_size=40)
    trainval = cifar.load_cifar100_fewshot(dataset, "trainval")
  for (split, src), size in zip(splits.items(), sizes):
    assert src.num_classes == size, split
    assert src.images.dtype == np.uint8 and src.images.shape[2:] == (32, 32, 3)
    assert src.class_names == sorted(cifar.split_classes(dataset, split))
    assert src.groups == [cifar.SUPERCLASS_OF[c] for c in src.class_names]
  if supers:
    assert tuple(len(set(s.groups)) for s in splits.values()) == supers
    assert not set(splits["train"].groups) & set(splits["test"].groups)
  names = [set(s.class_names) for s in splits.values()]
  assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
  assert trainval.num_classes == sizes[0] + sizes[1]
  assert wider.images.shape[2:] == (40, 40, 3) and wider.images.dtype == np.uint8
  # A class holds exactly the images of its label, from TFDS 'train' and 'test' (the mock
  # repeats the same records in both).
  src = splits["test"]
  label = cifar.FINE_NAMES.index(src.class_names[0])
  expected = [np.asarray(ds[i]["image"]) for i in range(n) if labels[i] == label] * 2
  got = src.images[0, :src.counts[0]]
  np.testing.assert_array_equal(np.sort(got.reshape(len(got), -1), 0),
                                np.sort(np.stack(expected).reshape(len(got), -1), 0))


def test_tfds_datasets_refuse_bad_input(tmp_path):
  with pytest.raises(DataError, match=r"not prepared in .*data_dir.*download=True"):
    cifar.load_cifar100_fewshot("cifar_fs", "train", data_dir=str(tmp_path))
  with pytest.raises(DataError, match="choose one of"):
    registry.load_split(_cfg("fc100"), "novel")
  with pytest.raises(DataError, match="choose one of"):
    cub.split_labels("base")


# --- cub ----------------------------------------------------------------------------------

def test_cub_chen_split_under_mock_data(no_prepared_tfds):
  assert [len(cub.split_labels(s)) for s in ("train", "val", "test", "trainval")] == \
      [100, 50, 50, 150]
  assert sorted(cub.split_labels("train") + cub.split_labels("val") +
                cub.split_labels("test")) == list(range(200))
  with tfds.testing.mock_data(num_examples=1500, policy=tfds.testing.MockPolicy.USE_CODE):
    t0 = time.perf_counter()
    train = registry.load_split(_cfg("cub", image_size=24), "train")
    test = cub.load_cub("test", image_size=20)
    print(f"cub under mock_data (1500 records x 2), train + test: "
          f"{time.perf_counter() - t0:.2f} s")
    ds = tfds.data_source("caltech_birds2011", split="train")
    first = ds[0]
  assert train.num_classes == 100 and test.num_classes == 50
  assert train.images.dtype == np.uint8 and train.images.shape[2:] == (24, 24, 3)
  assert test.images.shape[2:] == (20, 20, 3)
  idx = lambda src: [int(n.split(".")[0]) - 1 for n in src.class_names]
  assert all(i % 2 == 0 for i in idx(train)) and all(i % 4 == 3 for i in idx(test))
  assert int(train.counts.sum()) + int(test.counts.sum()) <= 3000
  # A record's image, squashed to 24x24 by Pillow, is in its class.
  label = int(first["label"])
  if label % 2 == 0:
    c = idx(train).index(label)
    small = np.asarray(Image.fromarray(np.asarray(first["image"])).resize((24, 24),
                                                                          Image.BILINEAR))
    assert any((train.images[c, j] == small).all() for j in range(train.counts[c]))


# --- mini_imagenet ------------------------------------------------------------------------

def _mini_pickle(path, wnids, per_class, rng, size=84):
  images = np.stack([_solid(rng, size, size) for _ in range(len(wnids) * per_class)])
  order = rng.permutation(len(images))  # class members scattered through the array
  class_dict = {w: sorted(order[i * per_class:(i + 1) * per_class].tolist())
                for i, w in enumerate(wnids)}
  with open(path, "wb") as f:
    pickle.dump({"image_data": images, "class_dict": class_dict}, f)
  return images, class_dict


def test_mini_imagenet_from_pickle_caches(tmp_path):
  rng = np.random.default_rng(0)
  train_w, val_w = list(mini_imagenet.TRAIN_WNIDS[:3]), list(mini_imagenet.VAL_WNIDS[:2])
  images, class_dict = _mini_pickle(tmp_path / "mini-imagenet-cache-train.pkl", train_w, 4, rng)
  _mini_pickle(tmp_path / "mini-imagenet-cache-val.pkl", val_w, 5, rng)
  src = registry.load_split(_cfg("mini_imagenet", data_dir=str(tmp_path)), "train")
  assert src.class_names == sorted(train_w) and src.images.dtype == np.uint8
  assert src.images.shape == (3, 4, 84, 84, 3) and list(src.counts) == [4, 4, 4]
  for c, w in enumerate(src.class_names):
    np.testing.assert_array_equal(src.images[c], images[class_dict[w]])
  trainval = mini_imagenet.load_mini_imagenet("trainval", str(tmp_path), image_size=32)
  assert trainval.class_names == sorted(train_w) + sorted(val_w)
  assert trainval.images.shape == (5, 5, 32, 32, 3) and list(trainval.counts) == [4] * 3 + [5] * 2
  # A cache holding a class of another split is refused, naming it.
  _mini_pickle(tmp_path / "mini-imagenet-cache-test.pkl", [mini_imagenet.VAL_WNIDS[3]], 2, rng)
  with pytest.raises(DataError, match=f"class {mini_imagenet.VAL_WNIDS[3]}.*a val class"):
    mini_imagenet.load_mini_imagenet("test", str(tmp_path))


def _csv(path, rows):
  path.write_text("filename,label\n" + "".join(f"{f},{w}\n" for f, w in rows))


def test_mini_imagenet_from_images_and_csv(tmp_path):
  rng = np.random.default_rng(1)
  (tmp_path / "images").mkdir()
  rows = {}
  for split, wnids in (("train", mini_imagenet.TRAIN_WNIDS[:2]), ("test",
                                                                  mini_imagenet.TEST_WNIDS[:1])):
    rows[split] = [(f"{w}{k:08d}.jpg", w) for w in wnids for k in (1, 2, 3)]
    _csv(tmp_path / f"{split}.csv", rows[split])
    for f, _ in rows[split]:
      (tmp_path / "images" / f).write_bytes(_encode(_solid(rng, 84, 84)))
  src = registry.load_split(_cfg("mini_imagenet", data_dir=str(tmp_path)), "train")
  assert src.class_names == sorted(mini_imagenet.TRAIN_WNIDS[:2])
  assert src.images.shape == (2, 3, 84, 84, 3) and src.images.dtype == np.uint8
  first = np.asarray(Image.open(tmp_path / "images" / rows["train"][0][0]))
  np.testing.assert_array_equal(src.images[0, 0], first)
  test = mini_imagenet.load_mini_imagenet("test", str(tmp_path))
  assert test.class_names == [mini_imagenet.TEST_WNIDS[0]] and list(test.counts) == [3]

  # A CSV naming a class outside the split is refused with the class and line named.
  bad = rows["test"] + [(f"{mini_imagenet.TRAIN_WNIDS[7]}00000001.jpg",
                         mini_imagenet.TRAIN_WNIDS[7])]
  _csv(tmp_path / "test.csv", bad)
  with pytest.raises(DataError, match=rf"test.csv:5 names class {mini_imagenet.TRAIN_WNIDS[7]}"
                                      r", which is not a test class.*a train class"):
    mini_imagenet.load_mini_imagenet("test", str(tmp_path))
  _csv(tmp_path / "test.csv", [("n0000000100000001.jpg", "n00000001")])
  with pytest.raises(DataError, match="n00000001.*not a mini-ImageNet class"):
    mini_imagenet.load_mini_imagenet("test", str(tmp_path))
  # An image the CSV names but images/ lacks.
  _csv(tmp_path / "test.csv", rows["test"])
  os.remove(tmp_path / "images" / rows["test"][2][0])
  with pytest.raises(DataError, match=r"1 images named in the test CSV are not in"):
    mini_imagenet.load_mini_imagenet("test", str(tmp_path))
  # Nothing there: the three layouts are named.
  with pytest.raises(DataError, match=r"\(a\) mini-imagenet-cache-val.pkl; \(b\) val.csv.*"
                                      r"\(c\).*imagenet_dir"):
    mini_imagenet.load_mini_imagenet("val", str(tmp_path))


def test_mini_imagenet_from_an_imagenet_train_folder(tmp_path):
  # CSV file <wnid>NNNNNNNN.jpg is the NNNNNNNN-th of the class's JPEGs sorted by number.
  wnid = mini_imagenet.VAL_WNIDS[0]
  (tmp_path / "ilsvrc" / wnid).mkdir(parents=True)
  colours = {}
  for n in (10, 2, 100, 7):  # numeric order 2, 7, 10, 100; string order 10, 100, 2, 7
    colours[n] = np.full((40, 60, 3), n, np.uint8)
    Image.fromarray(colours[n]).save(tmp_path / "ilsvrc" / wnid / f"{wnid}_{n}.JPEG",
                                     quality=100)
  _csv(tmp_path / "val.csv", [(f"{wnid}00000003.jpg", wnid), (f"{wnid}00000001.jpg", wnid)])
  src = registry.load_split(_cfg("mini_imagenet", data_dir=str(tmp_path),
                                 imagenet_dir=str(tmp_path / "ilsvrc"), image_size=16), "val")
  assert src.class_names == [wnid] and src.images.shape == (1, 2, 16, 16, 3)
  np.testing.assert_allclose(src.images[0, :, 8, 8, 0], [2, 10], atol=2)  # images 1 and 3
  _csv(tmp_path / "val.csv", [(f"{wnid}00000009.jpg", wnid)])
  with pytest.raises(DataError, match=f"image 9 of {wnid}.*has 4"):
    mini_imagenet.load_mini_imagenet("val", str(tmp_path), imagenet_dir=str(tmp_path / "ilsvrc"))


# --- tiered_imagenet ----------------------------------------------------------------------

def test_tiered_imagenet_png_and_npz_caches(tmp_path):
  rng = np.random.default_rng(2)
  specific = np.array([0, 2, 1, 0, 2, 2, 1, 0, 2])
  general = np.array([1, 0, 1, 1, 0, 0, 1, 1, 0])  # class 0, 1 -> 'birds', 2 -> 'tools'
  images_rgb = np.stack([_solid(rng, 84, 84) for _ in specific])
  labels = {"label_specific": specific, "label_general": general,
            "label_specific_str": ["robin", "jay", "hammer"],
            "label_general_str": ["tools", "birds"]}
  png_dir, npz_dir = tmp_path / "png", tmp_path / "npz"
  for d in (png_dir, npz_dir):
    d.mkdir()
    with open(d / "train_labels.pkl", "wb") as f:
      pickle.dump(labels, f)
  with open(png_dir / "train_images_png.pkl", "wb") as f:  # as cv2.imencode leaves them
    pickle.dump([np.frombuffer(_encode(x, "PNG"), np.uint8)[:, None] for x in images_rgb], f)
  np.savez(npz_dir / "train_images.npz", images=images_rgb[..., ::-1])  # cv2.imdecode's BGR

  from_png = registry.load_split(_cfg("tiered_imagenet", data_dir=str(png_dir)), "train")
  from_npz = mini_imagenet.load_tiered_imagenet("train", str(npz_dir))
  for src in (from_png, from_npz):
    assert src.class_names == ["robin", "jay", "hammer"]
    assert src.groups == ["birds", "birds", "tools"]
    assert list(src.counts) == [3, 2, 4] and src.images.dtype == np.uint8
    assert src.images.shape == (3, 4, 84, 84, 3)
    np.testing.assert_array_equal(src.images[2, :4], images_rgb[specific == 2])
  np.testing.assert_array_equal(from_png.images, from_npz.images)
  small = mini_imagenet.load_tiered_imagenet("train", str(npz_dir), image_size=28)
  assert small.images.shape == (3, 4, 28, 28, 3)
  with pytest.raises(DataError, match=r"val_labels.pkl and val_images_png.pkl.*renmengye"):
    mini_imagenet.load_tiered_imagenet("val", str(png_dir))
