"""`pds_lightning.classpath.import_class`: both spellings, and errors that name the bad spec."""

import pytest

from pds_lightning.classpath import import_class
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
