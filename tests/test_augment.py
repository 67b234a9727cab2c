"""Named augmentation ops: determinism given the key, shapes, ranges, and what each op does."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsl_jax.data import augment

EXAMPLE = "random_resized_crop(84)|flip_lr|color_jitter(0.4,0.4,0.4,0.1)|rotate(15)|cutout(16)"

# One spec per registered op, on 32x32 inputs; test_every_op_is_covered keeps it complete.
OPS = {
    "flip_lr": "flip_lr",
    "random_crop": "random_crop(32, padding=4)",
    "random_resized_crop": "random_resized_crop(24, scale=(0.2, 1.0))",
    "color_jitter": "color_jitter(0.4, 0.4, 0.4, 0.1)",
    "rotate": "rotate(15)",
    "cutout": "cutout(8)",
    "grayscale": "grayscale(0.5)",
    "resize": "resize(16)",
}
OUT_SIZE = {"random_resized_crop": 24, "resize": 16}


def _images(d, b=3, size=32):
  return jax.random.uniform(jax.random.PRNGKey(0), (b, size, size, d), jnp.float32)


def _run(spec, images, key=0):
  fn = augment.parse(spec)
  return np.asarray(jax.jit(lambda k, x: augment.apply(fn, k, x))(jax.random.PRNGKey(key), images))


def test_every_op_is_covered():
  assert sorted(OPS) == augment.AUGMENTATIONS.names()


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_is_a_function_of_its_key(name):
  fn = augment.parse(OPS[name])
  step = jax.jit(lambda k, x: augment.apply(fn, k, x))
  for d in (3, 1):
    x = _images(d)
    outs = [np.asarray(step(jax.random.PRNGKey(k), x)) for k in (0, 0, 1, 2, 3)]
    size = OUT_SIZE.get(name, 32)
    for out in outs:
      assert out.shape == (3, size, size, d) and out.dtype == np.float32
      assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_array_equal(outs[0], outs[1])
    differs = any(not np.array_equal(outs[0], o) for o in outs[2:])
    # resize ignores the key; grayscale has nothing to do on one channel.
    assert differs == (name != "resize" and not (name == "grayscale" and d == 1))


def test_example_pipeline_under_jit_and_vmap():
  for d in (3, 1):
    x = _images(d).at[1].set(_images(d)[0])
    out = _run(EXAMPLE, x)
    assert out.shape == (3, 84, 84, d) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    # Each image has its own key: two copies of one image come out differently.
    assert not np.array_equal(out[0], out[1])


def test_empty_spec_means_no_augmentation():
  for spec in ("", "   ", None):
    assert augment.parse(spec) is None
  x = _images(3)
  assert augment.apply(None, jax.random.PRNGKey(0), x) is x


def test_unknown_op_names_the_close_ones():
  with pytest.raises(ValueError, match=r"did you mean 'flip_lr'\?.*registered: color_jitter"):
    augment.parse("random_crop(32)|flip_rl")


@pytest.mark.parametrize("spec, says", [
    ("cutout(16, 3)", r"too many positional arguments.*cutout\(size\)"),
    ("cutout()", r"missing a required argument: 'size'.*cutout\(size\)"),
    ("rotate(degree=15)", r"unexpected keyword argument 'degree'.*rotate\(degrees\)"),
    ("rotate(15", r"Cannot read the op 'rotate\(15'.*name\(args\)"),
    ("cutout(__import__('os'))", r"is not a literal.*cutout\(size\)"),
    ("color_jitter(brightness=-1)", r"brightness must be a strength in \[0, inf\].*color_jitter\(brightness=0.0"),
    ("flip_lr(p=2)", r"p must be a probability in \[0, 1\]"),
    ("random_resized_crop(84, scale=(0.9, 0.2))", r"scale must be a \(min, max\) pair"),
    ("flip_lr||rotate(5)", r"Empty op.*remove the extra '\|'"),
])
def test_bad_arguments_name_the_op_and_its_signature(spec, says):
  with pytest.raises(ValueError, match=says):
    augment.parse(spec)


def test_arguments_may_use_arithmetic():
  assert augment.parse("random_resized_crop(84, scale=(0.2, 1), ratio=(3/4, 4/3))") is not None
  assert augment.parse("rotate(2 * 90)") is not None
  with pytest.raises(ValueError, match=r"degrees must be in \[0, 180\], got 200"):
    augment.parse("rotate(2 * 100)")


def test_crop_that_does_not_fit_names_the_fix():
  with pytest.raises(ValueError, match="lower size or raise padding"):
    _run("random_crop(40)", _images(3))


def test_flip_with_p1_mirrors_exactly():
  x = _images(3)
  np.testing.assert_array_equal(_run("flip_lr(p=1)", x), np.asarray(x)[:, :, ::-1, :])
  np.testing.assert_array_equal(_run("flip_lr(p=0)", x), np.asarray(x))


def test_random_crop_is_a_window_of_the_padded_image():
  x = np.asarray(_images(1, b=4))
  np.testing.assert_array_equal(_run("random_crop(32)", x), x)
  out = _run("random_crop(32, padding=4)", x)
  padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
  for i in range(len(x)):
    assert any(np.array_equal(out[i], padded[i, dy:dy + 32, dx:dx + 32])
               for dy in range(9) for dx in range(9))


def test_cutout_zeroes_one_clipped_square():
  ones = jnp.ones((16, 32, 32, 3), jnp.float32)
  out = _run("cutout(8)", ones)
  inside = 0
  for img in out:
    zero = (img == 0).all(-1)
    assert ((img == 0) | (img == 1)).all() and ((img == 0).any(-1) == zero).all()
    ys, xs = np.nonzero(zero)
    box = zero[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    assert box.all() and box.sum() == zero.sum()  # one solid rectangle
    if 0 < ys.min() and ys.max() < 31 and 0 < xs.min() and xs.max() < 31:
      assert box.shape == (8, 8)
      inside += 1
    else:
      assert box.shape[0] <= 8 and box.shape[1] <= 8
  assert inside > 0


def test_rotate_zero_is_identity_and_turns_about_the_centre():
  x = _images(3)
  np.testing.assert_allclose(_run("rotate(0)", x), np.asarray(x), atol=1e-6)
  # A round blob centred on the image is the same at every angle (up to bilinear blur);
  # a bar is not.
  yy, xx = np.mgrid[:32, :32] - 15.5
  blob = np.exp(-(yy**2 + xx**2) / 50).astype(np.float32)[None, :, :, None].repeat(4, 0)
  bar = (np.abs(yy) < 2).astype(np.float32)[None, :, :, None].repeat(4, 0)
  assert np.abs(_run("rotate(45)", blob) - blob).max() < 0.02  # 0.045 half a pixel off-centre
  assert np.abs(_run("rotate(45)", bar) - bar).mean() > 0.05


def test_color_jitter():
  x = _images(3)
  np.testing.assert_array_equal(_run("color_jitter(0, 0, 0, 0)", x), np.asarray(x))
  # Brightness multiplies each image by one factor in [0.5, 1.5] (torchvision), then clips.
  dim = 0.5 * x
  out = _run("color_jitter(brightness=0.5)", dim)
  factor = out / np.asarray(dim)
  for i in range(3):
    unclipped = out[i] < 1
    assert 0.5 <= factor[i][unclipped].min() and factor[i][unclipped].max() <= 1.5
    np.testing.assert_allclose(factor[i][unclipped], factor[i][unclipped].mean(), rtol=1e-4)
  # Saturation and hue leave grey pixels alone and one channel untouched.
  grey = jnp.repeat(x[..., :1], 3, -1)
  np.testing.assert_allclose(_run("color_jitter(0, 0, 0.8, 0.5)", grey), np.asarray(grey), atol=1e-5)
  np.testing.assert_array_equal(_run("color_jitter(0, 0, 0.8, 0.5)", x[..., :1]), np.asarray(x[..., :1]))
  assert not np.allclose(_run("color_jitter(0, 0, 0, 0.5)", x), np.asarray(x), atol=1e-2)


def test_grayscale_keeps_channels():
  x = _images(3)
  out = _run("grayscale(1)", x)
  luma = np.asarray(x) @ np.array([0.2989, 0.587, 0.114], np.float32)  # Rec. 601 as torchvision, tf.image
  np.testing.assert_allclose(out, np.repeat(luma[..., None], 3, -1), atol=1e-5)
  np.testing.assert_array_equal(_run("grayscale(0)", x), np.asarray(x))


def test_random_resized_crop_of_the_whole_square_is_identity():
  x = _images(3)
  np.testing.assert_allclose(_run("random_resized_crop(32, scale=(1, 1), ratio=(1, 1))", x),
                             np.asarray(x), atol=1e-5)
  # A crop shows a zoomed part: a constant image stays constant at any box.
  half = jnp.full((3, 32, 32, 1), 0.5)
  np.testing.assert_allclose(_run("random_resized_crop(16)", half), 0.5, atol=1e-5)


def test_resize_is_deterministic_and_bilinear():
  x = _images(1)
  np.testing.assert_allclose(_run("resize(32)", x), np.asarray(x), atol=1e-6)
  np.testing.assert_allclose(_run("resize(64)", x, key=0), _run("resize(64)", x, key=7))


def test_wrong_images_name_the_fix():
  fn = augment.parse("flip_lr")
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match=r"apply\(\) takes a batch \[B, H, W, D\]"):
    augment.apply(fn, key, _images(3)[0])
  with pytest.raises(ValueError, match=r"convert uint8 with x.astype\(jnp.float32\) / 255"):
    augment.apply(fn, key, jnp.zeros((2, 8, 8, 3), jnp.uint8))
