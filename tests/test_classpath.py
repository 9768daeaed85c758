"""`pds_lightning.classpath.import_class`: both spellings, and errors that name the bad spec."""

import pytest

from pds_lightning.classpath import import_class, instantiate
from pds_lightning.features import DigitFeatures


def test_colon_and_dot_spellings_name_the_same_class():
    assert import_class("pds_lightning.features:DigitFeatures") is DigitFeatures
    assert import_class("pds_lightning.features.DigitFeatures") is DigitFeatures


@pytest.mark.parametrize("spec, message", [
    ("DigitFeatures", "feature extractor wants 'package.module:Class'"),
    ("pds_lightning.features:NoSuchClass", "cannot import feature extractor 'pds_lightning.features:NoSuchClass'"),
    ("no_such_package.mod:Class", "cannot import feature extractor 'no_such_package.mod:Class'"),
])
def test_bad_specs_raise_one_value_error(spec, message):
    with pytest.raises(ValueError, match=message):
        import_class(spec, "feature extractor")


class KeepsArguments:
    def __init__(self, scale: float = 1.0, name: str = "a"):
        self.scale, self.name = scale, name


class DropsAnArgument:
    def __init__(self, scale: float = 1.0):
        self.factor = scale


def test_spec_of_is_the_inverse_of_instantiate_and_names_a_missing_attribute():
    from pds_lightning.classpath import spec_of

    spec = spec_of(KeepsArguments(2.0, "b"))
    assert spec == {"class_path": "test_classpath.KeepsArguments", "init_args": {"scale": 2.0, "name": "b"}}
    assert vars(instantiate(spec)) == {"scale": 2.0, "name": "b"}
    with pytest.raises(ValueError, match="keeps no attribute 'scale'"):
        spec_of(DropsAnArgument(3.0))
