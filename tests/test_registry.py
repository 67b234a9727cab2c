"""Registry: duplicates refused, 'did you mean' on unknown names, bad options named.

The learner and backbone registries (`meta.LEARNERS`, `models.MODELS`) are
Registry instances behind `meta.get` / `models.get`.
"""

import pytest

from fsl_jax import meta, models
from fsl_jax.meta import matchingnet, protonet, r2d2
from fsl_jax.registry import Registry, UnknownName


def _widget(size=1, color="red"):
  return (size, color)


def _gadget(size=1):
  return size


def test_duplicate_name_refused():
  reg = Registry("widget")
  reg.register("widget", _widget)
  reg.register("widget", _widget)  # the same factory again (a re-import) is no conflict
  with pytest.raises(ValueError, match="'widget' is already registered .*_widget"):
    reg.register("widget")(_gadget)
  assert reg.get("widget") is _widget and reg.names() == ["widget"]

  with pytest.raises(ValueError, match="already registered"):
    meta.register("protonet")(matchingnet.MatchingNet)
  with pytest.raises(ValueError, match="already registered"):
    models.register("conv4")(_gadget)
  assert meta.LEARNERS.get("protonet") is protonet.ProtoNet
  assert models.MODELS.get("conv4") is models.conv4.Conv4


def test_unknown_name_suggests_close_ones():
  reg = Registry("widget")
  reg.register("widget", _widget)
  reg.register("sprocket", _gadget)
  with pytest.raises(UnknownName) as err:
    reg.get("widgte")
  assert str(err.value) == ("Unknown widget 'widgte'; did you mean 'widget'? "
                            "registered: sprocket, widget.")
  with pytest.raises(UnknownName, match=r"'zzz'; registered: sprocket, widget\.$"):
    reg.build("zzz")  # nothing close: no suggestion

  for lookup, close in [(lambda: meta.get("protonat", model=None), "'protonet'"),
                        (lambda: meta.get("r2d3", model=None), "'r2d2'"),
                        (lambda: models.get("conv5"), "'conv4'")]:
    with pytest.raises(ValueError) as err:  # UnknownName is a ValueError: one-line CLI errors
      lookup()
    assert isinstance(err.value, UnknownName)
    assert f"did you mean {close}?" in str(err.value) and "\n" not in str(err.value)


def test_build_with_a_bad_option_names_it():
  reg = Registry("widget")
  reg.register("widget", _widget)
  assert reg.build("widget", size=3) == (3, "red")
  with pytest.raises(ValueError, match=r"widget 'widget' takes no option colour; its options: "
                                       r"size, color"):
    reg.build("widget", size=3, colour="blue")

  with pytest.raises(ValueError, match=r"learner 'matchingnet' takes no option scal; its options: .*scale"):
    meta.get("matchingnet", model=None, scal=5.0)
  with pytest.raises(ValueError, match=r"model 'conv4' takes no option hiden; its options: .*hidden"):
    models.get("conv4", hiden=16)
  # Other TypeErrors are the factory's own and pass through unchanged.
  with pytest.raises(TypeError, match="missing 1 required positional argument: 'model'"):
    meta.get("protonet")


def test_module_functions_are_the_registries():
  assert meta.names() == meta.LEARNERS.names() == [
      "anil", "baseline", "finetune", "fomaml", "logreg", "maml", "mamlpp", "matchingnet",
      "metaopt", "metasgd", "protonet", "r2d2", "reptile", "setfit", "simpleshot"]
  assert "conv4" in models.names() and models.names() == models.MODELS.names()
  learner = meta.get("r2d2", model=models.get("conv4", hidden=8), init_lambda=2.0)
  assert isinstance(learner, r2d2.R2D2) and isinstance(learner, meta.MetricLearner)
  assert (learner.init_lambda, learner.model.hidden) == (2.0, 8)
