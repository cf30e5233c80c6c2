"""conf/data/lm.yaml lists keys only so that `data.<key>=` overrides work: they must equal the defaults."""
import inspect

from conftest import CONF
from omegaconf import OmegaConf

from saeexp.data.lm import LMSource


def test_lm_yaml_values_are_the_constructor_defaults():
    yaml = OmegaConf.to_container(OmegaConf.load(CONF / "data" / "lm.yaml"))
    params = inspect.signature(LMSource).parameters
    for k, v in yaml.items():
        if k in ("_target_", "cache_dir"):
            continue
        assert k in params, k
        default = params[k].default
        assert (list(default) if isinstance(default, tuple) else default) == v, k
