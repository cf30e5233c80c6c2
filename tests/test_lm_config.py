"""conf/data/lm.yaml lists keys only so that `data.<key>=` overrides work: they must equal the defaults."""
import inspect

from conftest import CONF
from omegaconf import OmegaConf

from saeexp.data.lm import LMSource


def test_lm_yaml_values_are_the_constructor_defaults():
    yaml = OmegaConf.to_container(OmegaConf.load(CONF / "data" / "lm.yaml"))
    params = inspect.signature(LMSource).parameters
    # a run harvests what it trains on unless told otherwise (saeexp-eval and -finetune have no train.tokens)
    assert yaml["harvest_tokens"] == "${oc.select:train.tokens,1000000}"
    for k, v in yaml.items():
        if k in ("_target_", "cache_dir", "harvest_tokens"):
            continue
        assert k in params, k
        default = params[k].default
        assert (list(default) if isinstance(default, tuple) else default) == v, k
