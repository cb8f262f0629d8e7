"""ffcv sets torch's thread count when imported; fastbt keeps the caller's (pipelines.ffcv_threads)."""

import subprocess
import sys

# In a fresh process: ffcv is imported there for the first time (this test process may have done it).
CONVERT_THEN_COUNT = """
import sys, torch
torch.set_num_threads(3)
from pipelines.convert import convert
from pipelines.options import Options
convert(sys.argv[1], sys.argv[2], Options("ffcv", max_resolution=40), workers=1, progress=False)
print(torch.get_num_threads())
"""


def test_converting_to_ffcv_keeps_the_callers_torch_threads(images, tmp_path):
    # the demo converts and then trains in one process: it trained on one core when ffcv's import set 1
    done = subprocess.run([sys.executable, "-c", CONVERT_THEN_COUNT, str(images), str(tmp_path / "ffcv")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "3"
