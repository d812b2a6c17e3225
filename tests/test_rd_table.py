"""benchmarks.rd_table: several rate-distortion runs merged into one gap table with a monotonicity line."""

import json

import pytest

from benchmarks import rd_table
from neurcomp.config.errors import InputError


def _record(volume, codec, target, psnr):
    return {"volume": volume, "codec": codec, "target_ratio": target, "ratio": target * 1.01, "psnr": psnr,
            "mean_psnr": 20.0}


def test_merges_folders_and_says_where_the_curve_does_not_fall(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "rd.json").write_text(json.dumps(
        [_record("v1", "sz3", t, 50 - t / 20) for t in (100, 200)] + [_record("v1", "neurcomp", 100, 45),
                                                                       _record("v1", "neurcomp", 200, 40)]))
    (tmp_path / "b" / "rd.json").write_text(json.dumps(
        [_record("v2", "sperr", t, 60.0) for t in (100, 200, 400)]
        + [_record("v2", "neurcomp", t, p) for t, p in ((100, 62.0), (200, 61.0), (400, 62.5))]))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{rd_table.BEGIN}\nold table\n{rd_table.END}\noutro\n")
    text = rd_table.main([str(tmp_path / "a"), str(tmp_path / "b"), "--readme", str(readme),
                          "--plots", str(tmp_path / "plots")])
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["rd_v1.png", "rd_v2.png"]
    assert "| v1 | 100 | sz3 | 45.00 (101) | 45.00 (101) | +0.00 |" in text
    assert "| v2 | 400 | sperr | 60.00 (404) | 62.50 (404) | +2.50 |" in text
    assert "- v1: 45.00 / 40.00 dB at 100 / 200: falls as the ratio rises" in text
    assert "- v2: 62.00 / 61.00 / 62.50 dB at 100 / 200 / 400: does NOT fall as the ratio rises" in text
    doc = readme.read_text()
    assert doc.startswith("intro\n") and doc.endswith("outro\n") and "old table" not in doc and text in doc


def test_a_missing_folder_or_block_is_a_one_line_error(tmp_path):
    with pytest.raises(InputError, match="rd.json: not found"):
        rd_table.main([str(tmp_path)])
    (tmp_path / "rd.json").write_text("[]")
    (tmp_path / "R.md").write_text("no block")
    with pytest.raises(InputError, match="R.md: no"):
        rd_table.main([str(tmp_path), "--readme", str(tmp_path / "R.md")])


def test_one_column_per_codec_with_the_gap_to_the_better_error_bounded_rival(tmp_path):
    (tmp_path / "a").mkdir()
    records = [_record("v1", "sz3", 100, 40.0), _record("v1", "sperr", 100, 44.0), _record("v1", "zfp", 100, 30.0),
               _record("v1", "latent", 100, 45.5), _record("v1", "sz3", 200, 35.0), _record("v1", "neurcomp", 200, 36.0)]
    (tmp_path / "a" / "rd.json").write_text(json.dumps(records))
    readme = tmp_path / "README.md"
    begin, end = rd_table.markers("rd-latent")
    readme.write_text(f"a\n{rd_table.BEGIN}\nkept\n{rd_table.END}\n{begin}\nold\n{end}\nb\n")
    text = rd_table.main([str(tmp_path / "a"), "--codecs", "sz3", "sperr", "zfp", "neurcomp", "latent",
                          "--readme", str(readme), "--block", "rd-latent"])
    assert "| volume | target | sz3 | sperr | zfp | neurcomp | latent | latent gap dB |" in text
    assert "| v1 | 100 | 40.00 (101) | 44.00 (101) | 30.00 (101) | - | 45.50 (101) | +1.50 |" in text
    assert "| v1 | 200 | 35.00 (202) | - | - | 36.00 (202) | - |  |" in text
    doc = readme.read_text()
    assert "kept" in doc and "old" not in doc and text in doc


def test_the_bound_table_puts_our_best_network_beside_the_better_classical_codec(tmp_path):
    from benchmarks import bound_table

    def row(codec, ratio, volume="v.raw", bound=0.01):
        return {"volume": volume, "rel_bound": bound, "codec": codec, "ratio": ratio}

    classical = [row("sz3", 20.0), row("sperr", 25.0), row("zfp", 12.0)]
    (tmp_path / "n.json").write_text(json.dumps({"rows": [row("neurcomp", 10.0), *classical]}))
    (tmp_path / "l.json").write_text(json.dumps({"rows": [row("latent", 15.0), *classical]}))
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- bound-latent -->\nold\n<!-- /bound-latent -->\nb\n")
    text = bound_table.main([str(tmp_path / "n.json"), str(tmp_path / "l.json"), "--readme", str(readme)])
    assert "| v | 0.01 | **15.0** | 10.0 | 25.0 (SPERR) | 0.60x | 12.0 |" in text
    assert text in readme.read_text() and "old" not in readme.read_text()
    (tmp_path / "z.json").write_text(json.dumps({"rows": [row("latent", 11.0), *classical]}))
    assert "12.0 **ahead of us**" in bound_table.main([str(tmp_path / "z.json")])
    with pytest.raises(SystemExit, match="x.json: not an error_bound_bench --json file"):
        bound_table.main([str(tmp_path / "x.json")])
