"""Images through the trl target: a GRPO plan with image prompts (Visual-RFT) emits a
GRPOTrainer script, an SFT plan with images an SFTTrainer one; both feed the images through
the model's processor at the planned size and run two steps on the CPU with a tiny
random-weight Qwen2-VL.

Qwen2-VL's processor in transformers 5 needs torchvision (its video processor), which does
not install beside the CPU torch the project pins; the emitted script therefore runs in a
second environment with torch and torchvision, named by VRAMPLAN_VISION_PYTHON (`.ci/run`
makes it). Outside CI the tests skip without it; in CI they fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import requires
from vramplan import plan
from vramplan.cli import write_files
from vramplan.emit import emit
from vramplan.errors import VramplanError

pytestmark = [pytest.mark.e2e, requires("trl")]

VISION_PYTHON = os.environ.get("VRAMPLAN_VISION_PYTHON", "")
if not VISION_PYTHON and not os.environ.get("CI"):
    pytest.skip("VRAMPLAN_VISION_PYTHON (python with torch + torchvision + trl) is not set", allow_module_level=True)

IMAGE = "112x84"  # 8 x 6 patches of 14 pixels, 2x2 merged: 12 tokens per image

# Built inside the vision environment: tokenizer with Qwen2-VL's image tokens, the processor,
# a random-weight model, images and prompts; prints the token ids it used.
BUILD = r"""
import json, sys
from pathlib import Path
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (AutoConfig, PreTrainedTokenizerFast, Qwen2VLForConditionalGeneration,
                          Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor)

root = Path(sys.argv[1]); model = root / "model"; model.mkdir(parents=True)
config = json.loads(sys.argv[2])
texts = [f"What is the colour of box {i} ? red green blue user assistant : </s>" for i in range(8)]
specials = ["[UNK]", "[PAD]", "</s>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]
tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=specials))
fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="</s>")
ids = [fast.convert_tokens_to_ids(t) for t in specials[3:]]
config.update(vocab_size=len(fast) + 8, image_token_id=ids[0], video_token_id=ids[1], vision_start_token_id=ids[2],
              vision_end_token_id=ids[3], eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
              bos_token_id=None)
torch.manual_seed(0)
Qwen2VLForConditionalGeneration(AutoConfig.for_model(**config)).save_pretrained(model)
template = ("{% for m in messages %}{{ m['role'] }} : {% if m['content'] is string %}{{ m['content'] }}{% else %}"
            "{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|> "
            "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %} </s> {% endfor %}"
            "{% if add_generation_prompt %}assistant : {% endif %}")
Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=fast, video_processor=Qwen2VLVideoProcessor(),
                 chat_template=template).save_pretrained(model)
w, h = (int(x) for x in sys.argv[3].split("x"))
colours = {"red": (220, 20, 20), "green": (20, 220, 20), "blue": (20, 20, 220)}
records = []
for i in range(6):
    name = list(colours)[i % 3]
    size = (w, h) if i % 2 == 0 else (2 * w, 2 * h)  # larger images are shrunk to the planned pixels
    Image.new("RGB", size, colours[name]).save(root / f"box{i}.png")
    records.append({"prompt": f"What is the colour of box {i} ?", "image": f"box{i}.png", "answer": name})
(root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
print(json.dumps({"config": config}))
"""

# Within the vision environment: image tokens the saved processor gives at the script's
# max_pixels, for a planned-size and a larger image.
TOKENS = r"""
import json, sys
from PIL import Image
from transformers import AutoProcessor
max_pixels, w, h = int(sys.argv[2]), *(int(x) for x in sys.argv[3].split("x"))
proc = AutoProcessor.from_pretrained(sys.argv[1], max_pixels=max_pixels)
merge = proc.image_processor.merge_size ** 2
out = {}
for name, size in (("planned", (w, h)), ("larger", (3 * w, 3 * h))):
    grid = proc.image_processor(images=[Image.new("RGB", size)], return_tensors="pt")["image_grid_thw"]
    out[name] = int(grid.prod()) // merge
print(json.dumps(out))
"""

REWARD = """
import json, os
LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "calls.jsonl")

def reward(prompts, completions, answer, **kwargs):
    with open(LOG, "a") as fh:
        images = [
            any(c.get("type") == "image" for m in p for c in m["content"] if isinstance(c, dict)) for p in prompts
        ]
        fh.write(json.dumps({"n": len(completions), "answers": answer, "image_in_prompt": images}) + "\\n")
    return [float(a in str(c)) for a, c in zip(answer, completions)]
"""


def _vision_python() -> str:
    if not VISION_PYTHON:
        pytest.fail("CI runs these tests: .ci/run sets VRAMPLAN_VISION_PYTHON")
    return VISION_PYTHON


@pytest.fixture(scope="module")
def tiny_vl_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.test_emit_vlm import TINY_VL

    root = tmp_path_factory.mktemp("vrft")
    out = subprocess.run(
        [_vision_python(), "-c", BUILD, str(root), json.dumps(TINY_VL), IMAGE],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return root


def _plan(root: Path, **over: object):
    kw: dict[str, object] = dict(
        gpu="4090",
        method="lora",
        rl="grpo",
        seq_len=48,
        completion_len=16,
        num_generations=2,
        micro_batch=2,
        image_size=IMAGE,
        images_per_sample=1,
    )
    kw.update(over)
    return plan(str(root / "model" / "config.json"), **kw)  # type: ignore[arg-type]


def test_grpo_with_images_runs_two_steps(tiny_vl_images: Path, tmp_path: Path) -> None:
    root = tiny_vl_images
    p = _plan(root)
    out = emit(p, "trl", data=str(root / "data.jsonl"))
    run_dir = tmp_path / "run"
    write_files(str(run_dir), out.files, overwrite=False)
    (run_dir / "rewards.py").write_text(REWARD)
    script = run_dir / "train.py"
    text = script.read_text()
    assert "IMAGES = {'per_prompt': 1, 'max_pixels': 9408, 'tokens_per_image': 12}" in text
    assert "the images add" in text  # the header says what the images cost

    settings = json.loads(
        subprocess.run([sys.executable, str(script), "--dry-run"], capture_output=True, text=True, check=True).stdout
    )
    # the prompt the plan counts: text plus one image's tokens
    assert settings["max_prompt_tokens"] == 48 - 16 + 12
    assert settings["training"]["num_generations"] == p.setup.num_generations

    # the processor, at the script's max_pixels, gives the planned tokens and shrinks a larger image to them
    tokens = subprocess.run(
        [_vision_python(), "-c", TOKENS, str(root / "model"), str(settings["images"]["max_pixels"]), IMAGE],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert tokens.returncode == 0, tokens.stderr[-2000:]
    assert json.loads(tokens.stdout) == {"planned": 12, "larger": 12}

    env = {**os.environ, "PYTHONPATH": str(run_dir), "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(
        [
            _vision_python(),
            str(script),
            "--reward",
            "rewards:reward",
            "--max-steps",
            "2",
            "--output",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["steps"] == 2 and result["finite"]
    calls = [json.loads(line) for line in (run_dir / "calls.jsonl").read_text().splitlines()]
    assert calls, "the user's reward was never called"
    assert all(all(c["image_in_prompt"]) for c in calls)
    assert all(set(c["answers"]) <= {"red", "green", "blue"} for c in calls)


def test_a_record_with_the_wrong_image_count_is_refused(tiny_vl_images: Path, tmp_path: Path) -> None:
    root = tiny_vl_images
    data = tmp_path / "two.jsonl"
    data.write_text(json.dumps({"prompt": "What is the colour ?", "images": [str(root / "box0.png")] * 2}) + "\n")
    out = emit(_plan(root), "trl", data=str(data))
    write_files(str(tmp_path / "run"), out.files, overwrite=False)
    res = subprocess.run(
        [_vision_python(), str(tmp_path / "run" / "train.py"), "--max-steps", "1"],
        capture_output=True,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        timeout=600,
    )
    assert res.returncode != 0
    assert "has 2 images; the plan counts 1 per sample" in res.stderr
    # images inside the messages (TRL's own layout) are refused with one clear line, not a traceback
    chat = [{"role": "user", "content": [{"type": "image", "image": "box0.png"}, {"type": "text", "text": "Colour ?"}]}]
    data.write_text(json.dumps({"prompt": chat, "image": str(root / "box0.png")}) + "\n")
    res = subprocess.run(
        [_vision_python(), str(tmp_path / "run" / "train.py"), "--data", str(data), "--max-steps", "1"],
        capture_output=True,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        timeout=600,
    )
    assert res.returncode != 0
    assert "keep its messages to text" in res.stderr


def test_sft_with_images_runs_two_steps(tiny_vl_images: Path, tmp_path: Path) -> None:
    """The SFT script with images: max_length is the text plus the image tokens the plan
    counts; SFTTrainer trains on the processor's pixels for two steps."""
    root = tiny_vl_images
    data = tmp_path / "sft.jsonl"
    rows = [json.loads(line) for line in (root / "data.jsonl").read_text().splitlines()]
    data.write_text(
        "".join(
            json.dumps({"instruction": r["prompt"], "output": r["answer"], "image": str(root / r["image"])}) + "\n"
            for r in rows
        )
    )
    p = plan(
        str(root / "model" / "config.json"), gpu="4090", method="lora", seq_len=32, micro_batch=2, image_size=IMAGE
    )
    out = emit(p, "trl", data=str(data))
    write_files(str(tmp_path / "run"), out.files, overwrite=False)
    script = tmp_path / "run" / "train.py"
    settings = json.loads(
        subprocess.run([sys.executable, str(script), "--dry-run"], capture_output=True, text=True, check=True).stdout
    )
    assert settings["images"] == {"per_prompt": 1, "max_pixels": 9408, "tokens_per_image": 12}
    assert settings["training"]["max_length"] == 32 + 12
    res = subprocess.run(
        [_vision_python(), str(script), "--max-steps", "2", "--output", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["steps"] == 2 and result["finite"]


def test_image_plans_for_other_targets_are_refused(tiny_vl_images: Path) -> None:
    root = tiny_vl_images
    sft = plan(str(root / "model" / "config.json"), gpu="4090", method="lora", seq_len=48, image_size=IMAGE)
    for target in ("swift", "llamafactory", "axolotl"):
        with pytest.raises(VramplanError, match="training with images is emitted for trl only"):
            emit(sft, target)
    with pytest.raises(VramplanError, match="training with images is emitted for trl only"):
        emit(_plan(root), "swift")
