"""Bit packing and group statistics (engine.quant.primitives)."""

from __future__ import annotations

import pytest
import torch

from engine.quant import primitives as P

SHAPES = [(8,), (3, 16), (5, 64), (2, 3, 32), (4, 2, 128)]


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_pack_unpack_round_trip(bits, shape):
    gen = torch.Generator().manual_seed(bits * 100 + len(shape))
    codes = torch.randint(0, 1 << bits, shape, generator=gen, dtype=torch.int64).to(torch.uint8)
    packed = P.pack(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (*shape[:-1], shape[-1] * bits // 8)
    back = P.unpack(packed, bits)
    assert back.dtype == torch.uint8
    assert torch.equal(back, codes)


def test_pack_layout_first_code_in_lowest_bits():
    codes = torch.tensor([[1, 2, 3, 0]], dtype=torch.uint8)
    assert P.pack(codes, 2).tolist() == [[1 | 2 << 2 | 3 << 4 | 0 << 6]]
    assert P.pack(torch.tensor([[0xA, 0x5]], dtype=torch.uint8), 4).tolist() == [[0x5A]]
    bits1 = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 1]], dtype=torch.uint8)
    assert P.pack(bits1, 1).tolist() == [[0b1000_0001]]


def test_unpack_length_trims():
    codes = torch.randint(0, 4, (3, 16), dtype=torch.int64).to(torch.uint8)
    back = P.unpack(P.pack(codes, 2), 2, length=13)
    assert back.shape == (3, 13)
    assert torch.equal(back, codes[:, :13])


@pytest.mark.parametrize("bits", [0, 9, 16])
def test_bad_bits_rejected(bits):
    codes = torch.zeros(2, 16, dtype=torch.uint8)
    with pytest.raises(ValueError, match=f"{bits}-bit"):
        P.pack(codes, bits)
    with pytest.raises(ValueError, match=f"{bits}-bit"):
        P.unpack(codes, bits)


def test_odd_widths_pack_runs_of_eight_codes_little_endian():
    codes = torch.arange(8, dtype=torch.uint8).reshape(1, 8)  # 3-bit codes 0..7
    packed = P.pack(codes, 3)
    assert packed.shape == (1, 3)
    word = sum(int(b) << (8 * i) for i, b in enumerate(packed[0]))
    assert [(word >> (3 * i)) & 7 for i in range(8)] == list(range(8))
    assert P.packed_length(64, 3) == 24


def test_pack_rejects_ragged_last_dim():
    with pytest.raises(ValueError, match="not a multiple of 4"):
        P.pack(torch.zeros(2, 6, dtype=torch.uint8), 2)


@pytest.mark.parametrize(
    "n, group, expected",
    [(576, 128, 640), (640, 128, 640), (1, 32, 32), (96, 64, 128), (64, 64, 64), (160, 128, 256)],
)
def test_padded_length(n, group, expected):
    assert P.padded_length(n, group) == expected


def test_grouped_pads_with_zeros_and_masks_padding():
    w = torch.arange(1, 2 * 96 + 1, dtype=torch.float32).reshape(2, 96)
    groups, mask = P.grouped(w, 64)
    assert groups.shape == mask.shape == (2, 2, 64)
    assert mask.dtype == torch.bool
    flat_mask = mask.reshape(2, 128)
    assert flat_mask[:, :96].all() and not flat_mask[:, 96:].any()
    flat = groups.reshape(2, 128)
    assert torch.equal(flat[:, :96], w)
    assert torch.equal(flat[:, 96:], torch.zeros(2, 32))


def test_grouped_exact_multiple_has_full_mask():
    w = torch.randn(3, 128)
    groups, mask = P.grouped(w, 32)
    assert groups.shape == (3, 4, 32)
    assert mask.all()
    assert torch.equal(groups.reshape(3, 128), w)


def test_masked_stats_ignore_padding():
    # all real weights positive: padding zeros must not drag the min to 0
    w = torch.full((1, 96), 2.0)
    w[0, 64:] = torch.linspace(3.0, 5.0, 32)
    groups, mask = P.grouped(w, 64)
    lo, hi = P.masked_minmax(groups, mask)
    assert lo.tolist() == [[2.0, 3.0]]
    assert hi.tolist() == [[2.0, 5.0]]
    mean = P.masked_absmean(groups, mask)
    assert mean[0, 0].item() == pytest.approx(2.0)
    assert mean[0, 1].item() == pytest.approx(4.0, rel=1e-6)
