"""test_bad_input.py - saectl on broken files and command lines.

Each case must give exit code 1 (bad file / data) or 2 (bad command line), a message on
stderr that names the file and the problem, and no crash: no signal, no sanitizer report.
A failed encode leaves no output file behind.

The corrupt safetensors files are written by hand (struct + json) on purpose: the real
package refuses to write them.
"""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy as stnp

import make_ckpt as mk

D_IN, D_SAE, K, N = 8, 32, 4, 5


# ----------------------------------------------------------------------------- builders

def _weights(rng):
    return mk.random_weights(rng, "topk", D_IN, D_SAE)


def _cfg(**over):
    cfg = mk.native_cfg("topk", D_IN, D_SAE, k=K)
    cfg.update(over)
    return cfg


def _tensor_bytes(weights, order=("W_enc", "b_enc", "W_dec", "b_dec")):
    """(header dict, data bytes) of a well-formed F32 file, tensors laid out in order."""
    header, chunks, off = {}, [], 0
    for name in order:
        a = np.ascontiguousarray(weights[name], dtype="<f4")
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        chunks.append(b)
        off += len(b)
    return header, b"".join(chunks)


def _st_file(header: dict, data: bytes, header_len=None) -> bytes:
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    n = len(h) if header_len is None else header_len
    return struct.pack("<Q", n) + h + data


def _model(work: Path, rng, cfg=None, weights_bytes=None, cfg_text=None):
    d = work / "model"
    d.mkdir(parents=True, exist_ok=True)
    if cfg_text is None:
        cfg_text = json.dumps(cfg if cfg is not None else _cfg())
    (d / "cfg.json").write_text(cfg_text)
    if weights_bytes is None:
        mk.save_tensors(d / "sae_weights.safetensors", _weights(rng))
    else:
        (d / "sae_weights.safetensors").write_bytes(weights_bytes)
    return d


def _input(work: Path, rng, x=None):
    p = work / "acts.npy"
    np.save(str(p), mk.random_input(rng, N, D_IN) if x is None else x)
    return p


def _encode_args(d, xin, work):
    return ["encode", "--model", d, "--input", xin, "--output", work / "out.safetensors"]


# Each case: (work, rng) -> (argv, names, problem regex, allowed exit codes)
# names: strings of which at least one must appear on stderr (the file named)

def case_truncated(work, rng):
    d = _model(work, rng)
    p = d / "sae_weights.safetensors"
    b = p.read_bytes()
    p.write_bytes(b[: len(b) - 100])
    return (_encode_args(d, _input(work, rng), work), ["sae_weights.safetensors"],
            r"truncat|short|size|length|end|bound|range|cover|exceed|beyond|past|incomplete|small",
            (1,))


def case_truncated_in_header(work, rng):
    d = _model(work, rng)
    p = d / "sae_weights.safetensors"
    p.write_bytes(p.read_bytes()[:20])
    return (_encode_args(d, _input(work, rng), work), ["sae_weights.safetensors"],
            r"truncat|short|size|length|end|bound|range|exceed|beyond|past|header|small",
            (1,))


def case_empty_weights(work, rng):
    d = _model(work, rng, weights_bytes=b"")
    return (_encode_args(d, _input(work, rng), work), ["sae_weights.safetensors"],
            r"truncat|short|size|length|empty|small|header", (1,))


def case_header_len_huge(work, rng):
    h, data = _tensor_bytes(_weights(rng))
    d = _model(work, rng, weights_bytes=_st_file(h, data, header_len=1 << 62))
    return (_encode_args(d, _input(work, rng), work), ["sae_weights.safetensors"],
            r"header|length|size|exceed|large|beyond|truncat", (1,))


def case_header_not_json(work, rng):
    raw = b"{not json at all" + b" " * 8
    d = _model(work, rng, weights_bytes=struct.pack("<Q", len(raw)) + raw)
    return (_encode_args(d, _input(work, rng), work), ["sae_weights.safetensors"],
            r"json|header|parse|invalid|expected", (1,))


def case_offsets_out_of_range(work, rng):
    h, data = _tensor_bytes(_weights(rng))
    b, e = h["b_dec"]["data_offsets"]
    h["b_dec"]["data_offsets"] = [b + 4096, e + 4096]
    d = _model(work, rng, weights_bytes=_st_file(h, data))
    return (_encode_args(d, _input(work, rng), work), ["sae_weights.safetensors"],
            r"offset|range|bound|outside|beyond|exceed|past|end|cover|gap", (1,))


def case_overlapping_tensors(work, rng):
    # b_dec placed over the last bytes of W_dec; the union still covers the data block
    # without a gap, so the only fault is the overlap.
    h, data = _tensor_bytes(_weights(rng))
    wb, we = h["W_dec"]["data_offsets"]
    nb = 4 * D_IN
    h["b_dec"]["data_offsets"] = [we - nb, we]
    d = _model(work, rng, weights_bytes=_st_file(h, data[:we]))
    return (_encode_args(d, _input(work, rng), work), ["sae_weights.safetensors"],
            r"overlap", (1,))


def case_unknown_dtype(work, rng):
    h, data = _tensor_bytes(_weights(rng))
    h["b_enc"]["dtype"] = "Q7"
    d = _model(work, rng, weights_bytes=_st_file(h, data))
    return (_encode_args(d, _input(work, rng), work), ["sae_weights.safetensors"],
            r"dtype|Q7|type", (1,))


def case_shape_size_mismatch(work, rng):
    # header shape whose byte size disagrees with its offsets
    h, data = _tensor_bytes(_weights(rng))
    h["b_enc"]["shape"] = [D_SAE + 3]
    d = _model(work, rng, weights_bytes=_st_file(h, data))
    return (_encode_args(d, _input(work, rng), work), ["sae_weights.safetensors"],
            r"b_enc|size|shape|offset|bytes", (1,))


def case_shape_disagrees_with_cfg(work, rng):
    w = _weights(rng)
    w["W_enc"] = rng.standard_normal((D_IN, D_SAE + 1)).astype(np.float32)
    w["b_enc"] = np.zeros(D_SAE + 1, np.float32)
    d = work / "model"
    mk.write_native(d, _cfg(), w)
    return (_encode_args(d, _input(work, rng), work),
            ["sae_weights.safetensors", "cfg.json", str(d)],
            r"W_enc", (1,))


def case_missing_tensor(work, rng):
    w = _weights(rng)
    del w["b_dec"]
    d = work / "model"
    mk.write_native(d, _cfg(), w)
    return (_encode_args(d, _input(work, rng), work),
            ["sae_weights.safetensors", str(d)], r"b_dec", (1,))


def case_nan_in_weights(work, rng):
    w = _weights(rng)
    w["W_dec"][3, 2] = np.nan
    d = work / "model"
    mk.write_native(d, _cfg(), w)
    return (_encode_args(d, _input(work, rng), work),
            ["sae_weights.safetensors", str(d)], r"(?=.*W_dec)(?=.*(nan|finite|inf))", (1,))


def case_inf_in_weights_f16(work, rng):
    w = _weights(rng)
    w["b_enc"][5] = np.inf
    d = work / "model"
    mk.write_native(d, _cfg(), w, dtype="float16")
    return (_encode_args(d, _input(work, rng), work),
            ["sae_weights.safetensors", str(d)], r"(?=.*b_enc)(?=.*(nan|finite|inf))", (1,))


def case_cfg_not_json(work, rng):
    d = _model(work, rng, cfg_text='{"d_in": 8, "d_sae": 32,, architecture: topk')
    return (_encode_args(d, _input(work, rng), work), ["cfg.json"],
            r"json|parse|syntax|invalid|expected|unexpected|error", (1,))


def case_cfg_missing_d_in(work, rng):
    cfg = _cfg()
    del cfg["d_in"]
    d = _model(work, rng, cfg=cfg)
    return (_encode_args(d, _input(work, rng), work), ["cfg.json"], r"d_in", (1,))


def case_cfg_unknown_arch(work, rng):
    d = _model(work, rng, cfg=_cfg(architecture="banana"))
    return (_encode_args(d, _input(work, rng), work), ["cfg.json"],
            r"banana|architecture", (1,))


def case_k_gt_d_sae(work, rng):
    d = _model(work, rng, cfg=_cfg(k=D_SAE + 1))
    return (_encode_args(d, _input(work, rng), work), ["cfg.json", str(work / "model")],
            r"\bk\b", (1,))


def case_k_zero(work, rng):
    d = _model(work, rng, cfg=_cfg(k=0))
    return (_encode_args(d, _input(work, rng), work), ["cfg.json", str(work / "model")],
            r"\bk\b", (1,))


def case_constant_scale_zero(work, rng):
    d = _model(work, rng, cfg=_cfg(normalize_activations="constant_scale",
                                   normalization_scale=0.0))
    return (_encode_args(d, _input(work, rng), work), ["cfg.json", str(work / "model")],
            r"normalization_scale|scale", (1,))


def case_ptopk_beta_zero(work, rng):
    cfg = mk.native_cfg("ptopk", D_IN, D_SAE, k=K, beta_final=0.0)
    d = _model(work, rng, cfg=cfg)
    return (_encode_args(d, _input(work, rng), work), ["cfg.json", str(work / "model")],
            r"beta_final|beta", (1,))


def case_cfg_d_in_negative(work, rng):
    d = _model(work, rng, cfg=_cfg(d_in=-8))
    return (_encode_args(d, _input(work, rng), work), ["cfg.json", str(work / "model")],
            r"d_in", (1,))


def case_input_wrong_width(work, rng):
    d = _model(work, rng)
    xin = _input(work, rng, x=rng.standard_normal((N, D_IN + 3)).astype(np.float32))
    return (_encode_args(d, xin, work), ["acts.npy"],
            r"d_in|width|column|shape|" + str(D_IN + 3) + "|" + str(D_IN), (1,))


def case_input_int64(work, rng):
    d = _model(work, rng)
    xin = _input(work, rng, x=np.arange(N * D_IN, dtype=np.int64).reshape(N, D_IN))
    return (_encode_args(d, xin, work), ["acts.npy"], r"dtype|<i8|int64|i8|type", (1,))


def case_input_1d(work, rng):
    d = _model(work, rng)
    xin = _input(work, rng, x=np.zeros(D_IN, np.float32))
    return (_encode_args(d, xin, work), ["acts.npy"],
            r"dim|rank|1-d|1d|shape|2-d|2d|ndim", (1,))


def case_input_not_npy(work, rng):
    d = _model(work, rng)
    p = work / "acts.npy"
    p.write_bytes(b"this is not an npy file at all, just text\n")
    return (_encode_args(d, p, work), ["acts.npy"], r"magic|npy|format|header|invalid", (1,))


def case_input_truncated(work, rng):
    d = _model(work, rng)
    p = _input(work, rng)
    b = p.read_bytes()
    p.write_bytes(b[:-10])
    return (_encode_args(d, p, work), ["acts.npy"],
            r"truncat|short|size|length|end|incomplete|small", (1,))


def case_input_missing(work, rng):
    d = _model(work, rng)
    return (_encode_args(d, work / "nope.npy", work), ["nope.npy"],
            r"no such|exist|not found|open|cannot|can't|missing", (1,))


def case_missing_model_dir(work, rng):
    d = work / "no_such_model"
    return (_encode_args(d, _input(work, rng), work), [str(d), "no_such_model"],
            r"no such|exist|not found|open|cannot|can't|missing|directory", (1,))


def case_unknown_flag(work, rng):
    d = _model(work, rng)
    args = _encode_args(d, _input(work, rng), work) + ["--bogus-flag"]
    return (args, ["--bogus-flag", "bogus-flag"], r"unknown|unrecognized|invalid|flag", (2,))


def case_missing_required_flag(work, rng):
    d = _model(work, rng)
    return (["encode", "--model", d, "--output", work / "out.safetensors"], ["--input", "input"],
            r"required|missing|need", (2,))


def case_unknown_command(work, rng):
    return (["frobnicate"], ["frobnicate"], r"unknown|command", (2,))


def _codes_file(work, tensors):
    p = work / "codes.safetensors"
    stnp.save_file(tensors, str(p))
    return p


def case_decode_index_out_of_range(work, rng):
    d = _model(work, rng)
    idx = np.tile(np.arange(K, dtype=np.int32), (N, 1))
    idx[2, 1] = D_SAE
    p = _codes_file(work, {"indices": idx, "values": np.ones((N, K), np.float32)})
    return (["decode", "--model", d, "--input", p, "--output", work / "xhat.npy"],
            ["codes.safetensors"], r"index|indices|range|" + str(D_SAE), (1,))


def case_decode_negative_index(work, rng):
    d = _model(work, rng)
    ip = np.array([0, 2, 3], np.int64)
    p = _codes_file(work, {"indptr": ip, "indices": np.array([1, -4, 2], np.int32),
                           "values": np.ones(3, np.float32)})
    return (["decode", "--model", d, "--input", p, "--output", work / "xhat.npy"],
            ["codes.safetensors"], r"index|indices|range|-4|negative", (1,))


def case_decode_bad_indptr(work, rng):
    d = _model(work, rng)
    ip = np.array([0, 5, 2, 9], np.int64)           # decreasing and past nnz
    p = _codes_file(work, {"indptr": ip, "indices": np.arange(4, dtype=np.int32),
                           "values": np.ones(4, np.float32)})
    return (["decode", "--model", d, "--input", p, "--output", work / "xhat.npy"],
            ["codes.safetensors"], r"indptr|row|offset|range|monoton|decreas|nnz", (1,))


def case_decode_dense_wrong_width(work, rng):
    d = _model(work, rng)
    p = _codes_file(work, {"codes": np.ones((N, D_SAE + 2), np.float32)})
    return (["decode", "--model", d, "--input", p, "--output", work / "xhat.npy"],
            ["codes.safetensors"], r"codes|d_sae|width|shape|" + str(D_SAE), (1,))


def case_decode_nan_value(work, rng):
    d = _model(work, rng)
    val = np.ones((N, K), np.float32)
    val[1, 1] = np.nan
    p = _codes_file(work, {"indices": np.tile(np.arange(K, dtype=np.int32), (N, 1)),
                           "values": val})
    return (["decode", "--model", d, "--input", p, "--output", work / "xhat.npy"],
            ["codes.safetensors"], r"nan|finite|value", (1,))


def case_sparsify_bad_cfg(work, rng):
    d = work / "model"
    w = _weights(rng)
    mk.write_sparsify(d, D_IN, D_SAE, K, w)
    cfg = json.loads((d / "cfg.json").read_text())
    cfg["num_latents"] = D_SAE * 2          # disagrees with encoder.weight
    (d / "cfg.json").write_text(json.dumps(cfg))
    return (_encode_args(d, _input(work, rng), work),
            ["sae.safetensors", "cfg.json", str(d)],
            r"encoder\.weight|W_dec|shape|num_latents|d_sae|" + str(D_SAE), (1,))


CASES = {name[len("case_"):]: fn for name, fn in globals().items() if name.startswith("case_")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(run, rng, work, name):
    argv, names, problem, codes = CASES[name](work, rng)
    r = run(*argv, timeout=60)
    assert r.returncode in codes, f"[{name}] want exit {codes}\n{r.describe()}"
    err = r.stderr
    assert err.strip(), f"[{name}] nothing on stderr\n{r.describe()}"
    assert any(n in err for n in names), \
        f"[{name}] stderr does not name the file (any of {names})\n{r.describe()}"
    assert re.search(problem, err, re.IGNORECASE | re.DOTALL), \
        f"[{name}] stderr does not name the problem (/{problem}/)\n{r.describe()}"
    assert not (work / "out.safetensors").exists(), f"[{name}] a failed encode left its output"
    assert not (work / "xhat.npy").exists(), f"[{name}] a failed decode left its output"


def test_inspect_convert_bad_model_fail_cleanly(run, rng, work):
    """convert reports a broken weights file like encode does; inspect (which may read only
    cfg.json) must at least not crash."""
    h, data = _tensor_bytes(_weights(rng))
    d = _model(work, rng, weights_bytes=_st_file(h, data, header_len=(1 << 64) - 1))
    r = run("convert", "--model", d, "--output", work / "c", timeout=60)
    assert r.returncode == 1, r.describe()
    assert "sae_weights.safetensors" in r.stderr, r.describe()
    assert not (work / "c" / "sae_weights.safetensors").exists(), "failed convert left output"
    r = run("inspect", "--model", d, timeout=60)
    assert r.returncode in (0, 1), r.describe()
    if r.returncode == 1:
        assert "sae_weights.safetensors" in r.stderr, r.describe()
