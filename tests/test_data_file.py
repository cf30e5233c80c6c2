"""data=file: .npy and .safetensors (fp32/fp16/bf16), contiguous chunks shuffled in RAM, held-out tail never served."""
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from saeexp.data.file import FileSource
from saeexp.data.synthetic import SyntheticSource
from saeexp.errors import ConfigError

N, D, HELD = 6000, 4, 1000


def _rows():
    # every row carries its own index, so a batch tells which rows it came from
    return np.repeat(np.arange(N, dtype=np.float32)[:, None], D, axis=1)


@pytest.mark.parametrize("fmt", ["npy32", "npy16", "st32", "st16", "stbf16"])
def test_formats_serve_training_rows_only_and_heldout_tail(tmp_path, fmt):
    rows = _rows() / 8  # exact in fp16/bf16 for the first rows only; compare after rounding to the format
    if fmt.startswith("npy"):
        path = tmp_path / "a.npy"
        np.save(path, rows.astype(np.float16 if fmt == "npy16" else np.float32))
    else:
        dtype = {"st32": torch.float32, "st16": torch.float16, "stbf16": torch.bfloat16}[fmt]
        path = tmp_path / "a.safetensors"
        save_file({"acts": torch.from_numpy(rows).to(dtype)}, str(path))
    src = FileSource(str(path), d_in=D, heldout_tokens=HELD, chunk_tokens=500, buffer_chunks=3)
    src.prepare()
    want = torch.from_numpy(rows)
    if fmt in ("npy16", "st16"):
        want = want.half().float()
    elif fmt == "stbf16":
        want = want.bfloat16().float()
    torch.testing.assert_close(src.heldout(), want[-HELD:])
    held = set(want[-HELD:, 0].tolist()) - set(want[:-HELD, 0].tolist())
    seen = torch.cat([b for b, _ in zip(src.batches(256, seed=0), range(60))])
    assert seen.dtype == torch.float32 and seen.shape[1] == D
    assert not (set(seen[:, 0].tolist()) & held)  # no held-out row is ever trained on


def test_stream_is_shuffled_deterministic_and_resumable(tmp_path):
    np.save(tmp_path / "a.npy", _rows())
    src = FileSource(str(tmp_path / "a.npy"), d_in=D, heldout_tokens=HELD, chunk_tokens=500, buffer_chunks=3)
    first = [b for b, _ in zip(src.batches(100, seed=1), range(40))]
    again = [b for b, _ in zip(src.batches(100, seed=1), range(40))]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    resumed = [b for b, _ in zip(src.batches(100, seed=1, start=17), range(23))]
    assert all(torch.equal(a, b) for a, b in zip(first[17:], resumed))  # start=k continues exactly
    idx = first[0][:, 0]
    assert (idx.diff() != 1).any()  # rows within a batch are shuffled, not a contiguous slice
    other = next(iter(src.batches(100, seed=2)))
    assert not torch.equal(other, first[0])


def test_bad_files(tmp_path):
    np.save(tmp_path / "i.npy", np.zeros((5000, D), np.int64))
    with pytest.raises(ConfigError, match="int64"):
        FileSource(str(tmp_path / "i.npy"), d_in=D).prepare()
    np.save(tmp_path / "w.npy", np.zeros((5000, D), np.float32))
    with pytest.raises(ConfigError, match="width 4, but data.d_in=8"):
        FileSource(str(tmp_path / "w.npy"), d_in=8).prepare()
    with pytest.raises(ConfigError, match="no such file"):
        FileSource(str(tmp_path / "missing.npy"), d_in=D).prepare()


def test_synthetic_truth_and_heldout():
    src = SyntheticSource(d_in=16, n_features=32, max_p=0.2, groups=2, group_size=3, group_p=0.5, seed=3)
    truth = src.truth()
    torch.testing.assert_close(truth.norm(dim=1), torch.ones(32))
    x = next(iter(src.batches(4096, seed=0)))
    # each token is a non-negative combination of the truth: least squares recovers it exactly
    coef = torch.linalg.lstsq(truth.t(), x.t()).solution
    torch.testing.assert_close(coef.t() @ truth, x, atol=1e-4, rtol=1e-4)
    assert not torch.equal(src.heldout()[:4096], x)
    torch.testing.assert_close(src.heldout(), src.heldout())
