"""eval linear --out: each probe directory has its own result file (another --out does not replace it)."""
import json
import shutil

from test_evaluate import probe_cli, random_weights, shapes  # noqa: F401  (fixtures)


def test_two_probes_with_their_own_out_keep_their_own_results(random_weights, shapes, tmp_path):  # noqa: F811
    weights = tmp_path / "r18.pth"
    shutil.copy(random_weights, weights)
    flags = ["--cached-features"]
    assert probe_cli(weights, shapes, tmp_path / "lr_a", "eval.linear.epochs=1", flags=flags) == 0
    assert probe_cli(weights, shapes, tmp_path / "lr_b/", "eval.linear.epochs=1", "eval.linear.lr=0.1",
                     flags=flags) == 0
    a, b = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("lr_a", "lr_b"))
    assert (a["recipe"]["lr"], b["recipe"]["lr"]) == (0.3, 0.1)
    assert not (tmp_path / "r18_linear_cached.json").exists()  # nothing written for a probe not run
