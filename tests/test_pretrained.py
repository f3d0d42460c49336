"""Pretrained models by name: torchvision's weights through xt-vision, timm's models through xt-timm.

Nothing is downloaded. torchvision's "pretrained" weights are state dicts generated here and saved under
the file name torchvision looks for in ``$TORCH_HOME/hub/checkpoints/``; timm's are a file named by
``pretrained_cfg_overlay={'file': ...}``; a download that is attempted goes to a closed port (``https_proxy``)
or is refused by ``HF_HUB_OFFLINE=1``. The install test (``slow``) pip-installs both plugins into a venv and
fine-tunes, predicts and exports through the real ``xt``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import overlay_venv
from test_registry import write_image_folder

from xt_training.errors import ConfigError

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
# a download attempt fails at once, whatever network the machine has
NO_NETWORK = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": ""}


@pytest.fixture
def vision(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS / "xt-vision"))
    import xt_vision.models

    return xt_vision.models


@pytest.fixture
def xt_timm(monkeypatch, tmp_path):
    pytest.importorskip("timm")
    monkeypatch.syspath_prepend(str(PLUGINS / "xt-timm"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    import xt_timm.models
    import xt_timm.plugin
    import xt_timm.training

    xt_timm.plugin.model_names.cache_clear()
    return xt_timm


def torchvision_weights(torch_home: Path, name: str, seed: int = 1) -> tuple[Path, dict]:
    """A random state dict of ``name``'s DEFAULT weights saved where torchvision looks for their download."""
    from torchvision import models

    weights = models.get_model_weights(name).DEFAULT
    file = torch_home / "hub" / "checkpoints" / Path(weights.url).name
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    extra = {"aux_logits": True, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    state = models.get_model(name, num_classes=len(weights.meta["categories"]), **extra).state_dict()
    torch.save(state, file)
    return file, state


def pil_image(size=(40, 52), seed=0):
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(*size, 3, generator=g) * 255).to(torch.uint8).numpy())


# --- xt-vision ---------------------------------------------------------------------------------------------------
def test_torchvision_weights_come_from_torchs_cache_and_the_head_is_replaced(
    vision, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _, state = torchvision_weights(tmp_path, "resnet18")
    same_classes = vision.torchvision_model("resnet18", weights="DEFAULT")
    assert all(torch.equal(v, state[k]) for k, v in same_classes.state_dict().items())
    assert capsys.readouterr().err == ""  # 1000 classes: the head is the weights' own

    model = vision.torchvision_model("resnet18", num_classes=3, weights="IMAGENET1K_V1", freeze=True)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items() if not k.startswith("fc."))
    assert model.fc.weight.shape == (3, 512)
    assert capsys.readouterr().err == (
        "xt-vision: resnet18's weights ResNet18_Weights.IMAGENET1K_V1 classify 1000 classes, the data 3: its "
        "classifier 'fc' is replaced by a new Linear(in_features=512, out_features=3, bias=True)\n"
    )
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]


@pytest.mark.parametrize("name", ["resnet18", "googlenet", "mobilenet_v3_small", "squeezenet1_1"])
def test_a_model_for_a_checkpoint_is_built_as_the_pretrained_one_without_its_file(
    vision, name, tmp_path, monkeypatch
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "cache"))
    torchvision_weights(tmp_path / "cache", name)
    pretrained = vision.torchvision_model(name, num_classes=3, weights="DEFAULT").eval()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))  # the file is not there: not read
    rebuilt = vision.torchvision_model(name, num_classes=3, weights="DEFAULT", from_checkpoint=True).eval()
    rebuilt.load_state_dict(pretrained.state_dict())  # strict: the same parameters and buffers
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():  # and the same forward (googlenet's transform_input is no parameter)
        assert torch.equal(rebuilt(x), pretrained(x))
    assert not (tmp_path / "empty").exists()


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0"])
def test_an_image_folder_prepares_images_as_the_weights_transforms_do(vision, name, tmp_path):
    from torchvision import models

    from xt_training import registry

    weights = models.get_model_weights(name).DEFAULT
    preprocessing = vision.weights_preprocessing(name, weights="DEFAULT")
    native = weights.transforms()
    assert preprocessing == {
        "resize": native.resize_size[0],
        "crop": native.crop_size[0],
        "interpolation": native.interpolation.value,
        "mean": list(native.mean),
        "std": list(native.std),
    }
    root = write_image_folder(tmp_path / "images", per_class=4, size=(40, 52))
    for image_size, resize in (
        (None, native.resize_size[0]),
        (32, native.resize_size[0] * 32 // native.crop_size[0]),
    ):
        data = registry.create_data(
            "image-folder", root=str(root), image_size=image_size, preprocessing=preprocessing, num_workers=0
        )
        crop = native.crop_size[0] if image_size is None else image_size
        assert data.info["preprocessing"] == {**preprocessing, "resize": resize, "crop": crop}
        assert data.info["image_size"] == crop and data.info["normalization"] == {
            "mean": preprocessing["mean"],
            "std": preprocessing["std"],
        }
        image = pil_image()
        transform = data.loaders["val"].dataset.dataset.transform
        assert torch.equal(transform(image), weights.transforms(crop_size=crop, resize_size=resize)(image))
    assert vision.weights_preprocessing(name) is None  # random weights: the data's own preprocessing


def test_pretrained_torchvision_errors(vision, tmp_path):
    with pytest.raises(
        ConfigError,
        match="torchvision model 'resnet18' has no weights 'IMAGENET'; its weights: DEFAULT, IMAGENET1K_V1$",
    ):
        vision.torchvision_model("resnet18", weights="IMAGENET")
    with pytest.raises(
        ConfigError,
        match="freeze=True trains only the classifier of a pretrained resnet18; add weights=DEFAULT",
    ):
        vision.torchvision_model("resnet18", freeze=True)
    with pytest.raises(ConfigError, match="rejected the options \\['colour'\\]"):
        vision.torchvision_model("resnet18", weights="DEFAULT", from_checkpoint=True, colour="red")
    from xt_training.builtins.datasets import image_preprocessing

    with pytest.raises(
        ConfigError, match="an image preprocessing is a dict of crop, interpolation, mean, resize, std"
    ):
        image_preprocessing(
            {"resize": 256, "crop": 0, "interpolation": "bilinear", "mean": [0], "std": [1]}, None
        )

    # no file in the cache, no network: one line naming the file torchvision looked for and TORCH_HOME
    code = "from xt_vision.models import torchvision_model; torchvision_model('resnet18', weights='DEFAULT')"
    env = {**os.environ, **NO_NETWORK, "TORCH_HOME": str(tmp_path), "PYTHONPATH": str(PLUGINS / "xt-vision")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    last = out.stderr.strip().splitlines()[-1]
    file = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert last.startswith(
        "xt_training.errors.ConfigError: resnet18's weights ResNet18_Weights.IMAGENET1K_V1 are not in torch's cache and could not be downloaded ("
    )
    assert f"torchvision looked for {file} (TORCH_HOME={tmp_path}): copy the file there" in last
    assert not file.exists()


# --- xt-timm -----------------------------------------------------------------------------------------------------
def test_timm_model_names_are_timms_read_without_importing_it_and_cached(xt_timm, tmp_path):
    import timm

    assert xt_timm.plugin.model_names() == sorted(timm.list_models())
    (cache,) = (tmp_path / "cache" / "xt-training").glob("timm-models-*.txt")
    cache.write_text("only-this\n")  # a second process reads the cache, not timm's files
    code = "import sys; from xt_timm.plugin import model_names; print(model_names(), 'torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(PLUGINS / "xt-timm"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout == "['only-this'] False\n", out.stderr


def test_timm_pretrained_weights_load_from_their_file(xt_timm, tmp_path, capsys):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    state = timm.create_model("resnet18").state_dict()
    save_file(state, tmp_path / "resnet18.safetensors")
    overlay = {"file": str(tmp_path / "resnet18.safetensors")}
    model = xt_timm.models.timm_model(
        "resnet18", num_classes=3, pretrained=True, freeze=True, pretrained_cfg_overlay=overlay
    )
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items() if not k.startswith("fc."))
    assert model.fc.weight.shape == (3, 512)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    assert capsys.readouterr().err == (
        "xt-timm: resnet18's pretrained weights classify 1000 classes, the data 3: its classifier 'fc' is a "
        "new Linear(in_features=512, out_features=3, bias=True)\n"
    )
    rebuilt = xt_timm.models.timm_model("resnet18", num_classes=3, pretrained=True, from_checkpoint=True)
    rebuilt.load_state_dict(model.state_dict())  # built without reading any file (there is none to read)

    with pytest.raises(
        ConfigError,
        match=r"Invalid pretrained tag \(nope\) for resnet18.; its tags: timm.list_pretrained\('resnet18.\*'\)",
    ):
        xt_timm.models.timm_model("resnet18", pretrained="nope")
    with pytest.raises(
        ConfigError,
        match="freeze=True trains only the classifier of a pretrained resnet18; add pretrained=True",
    ):
        xt_timm.models.timm_model("resnet18", freeze=True)
    with pytest.raises(
        ConfigError, match="timm could not read the pretrained weights of resnet18 from /nowhere.pth"
    ):
        xt_timm.models.timm_model(
            "resnet18", pretrained=True, pretrained_cfg_overlay={"file": "/nowhere.pth"}
        )


def test_timm_offline_is_one_line_naming_the_hub_file_and_hf_home(tmp_path):
    pytest.importorskip("timm")
    code = "from xt_timm.models import timm_model; timm_model('resnet18', pretrained=True)"
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(PLUGINS / "xt-timm"),
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "xt_training.errors.ConfigError: resnet18's pretrained weights are not in the Hugging Face cache"
    )
    assert (
        f"timm looked for model.safetensors (or pytorch_model.bin) of timm/resnet18.a1_in1k in {tmp_path / 'hub'} "
        f"(HF_HOME={tmp_path}, HF_HUB_OFFLINE=1): download them once with network, or give a file: "
        "pretrained_cfg_overlay={'file': PATH}"
    ) in last


@pytest.mark.parametrize(
    ("name", "image_size"), [("resnet18", None), ("resnet18", 32), ("vit_tiny_patch16_224", 48)]
)
def test_an_image_folder_prepares_images_as_timms_data_config_does(xt_timm, name, image_size, tmp_path):
    import timm.data

    from xt_training import registry

    preprocessing = xt_timm.models.timm_preprocessing(name, pretrained=True)
    config = timm.data.resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(name).to_dict())
    if image_size is not None:
        config["input_size"] = (3, image_size, image_size)
    native = timm.data.create_transform(**config, is_training=False)
    root = write_image_folder(tmp_path / "images", per_class=4, size=(40, 52))
    data = registry.create_data(
        "image-folder", root=str(root), image_size=image_size, preprocessing=preprocessing, num_workers=0
    )
    image = pil_image()
    assert torch.equal(data.loaders["val"].dataset.dataset.transform(image), native(image))
    assert data.info["preprocessing"]["interpolation"] == config["interpolation"]
    assert xt_timm.models.timm_preprocessing(name) is None


def test_timm_optimizers_are_timms_and_not_torchs(xt_timm):
    import timm.optim

    assert set(xt_timm.plugin.OPTIMIZERS) <= set(timm.optim.list_optimizers())
    assert not {n.lower() for n in dir(torch.optim)} & set(xt_timm.plugin.OPTIMIZERS)
    for name in xt_timm.plugin.OPTIMIZERS:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        before = model.weight.detach().clone()
        optimizer = xt_timm.training.timm_optimizer(name, params=model.parameters(), lr=0.01)
        for _ in range(2):  # ADOPT's first step only estimates the second moment
            optimizer.zero_grad()
            model(torch.randn(8, 4)).square().mean().backward()
            optimizer.step()
        assert not torch.equal(model.weight, before), name


def test_timm_schedulers_step_once_per_epoch_as_timms_training_script_does(xt_timm):
    from timm.scheduler import create_scheduler_v2

    def optimizer():
        return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)

    ours = optimizer()
    schedule = xt_timm.training.timm_scheduler("cosine", ours, epochs=6, warmup_epochs=2, cycle_limit=2)
    theirs = optimizer()
    native, _ = create_scheduler_v2(
        theirs, sched="cosine", num_epochs=6, warmup_epochs=2, warmup_lr=1e-5, cycle_limit=2
    )
    for epoch in range(1, 7):
        schedule.step()
        native.step(epoch)  # timm's train.py: lr_scheduler.step(epoch + 1) after each epoch from 0
        assert ours.param_groups[0]["lr"] == theirs.param_groups[0]["lr"]
    again = xt_timm.training.timm_scheduler("cosine", optimizer(), epochs=6, warmup_epochs=2, cycle_limit=2)
    again.load_state_dict(schedule.state_dict())
    assert again.state_dict() == schedule.state_dict()
    with pytest.raises(ConfigError, match="scheduler 'timm.cosine' needs epochs"):
        xt_timm.training.timm_scheduler("cosine", optimizer())


# --- pip install for real: fine-tune, predict, export through the xt command line -------------------------------
@pytest.mark.slow
def test_pip_installed_plugins_fine_tune_pretrained_models_and_predict_and_export_with_their_preprocessing(
    tmp_path,
):
    pytest.importorskip("timm")
    onnxruntime = pytest.importorskip("onnxruntime")
    from PIL import Image
    from torchvision import models

    python, _ = overlay_venv(tmp_path / "venv", hide=("xt_vision", "xt_timm"))
    sources = [shutil.copytree(PLUGINS / name, tmp_path / "src" / name) for name in ("xt-vision", "xt-timm")]
    env = dict(os.environ)  # a PYTHONPATH to a checkout's xt_training stays: the plugins are installed by pip
    env.update(
        OMP_NUM_THREADS="1", TORCH_HOME=str(tmp_path / "torch"), XDG_CACHE_HOME=str(tmp_path / "cache")
    )
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", **NO_NETWORK)
    pip = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-build-isolation", *map(str, sources)],
        check=True,
        env=env,
        timeout=300,
    )

    def xt(*args: str, code: int = 0, **changes: str) -> subprocess.CompletedProcess:
        out = subprocess.run([python, "-m", "xt_training", *args], capture_output=True, text=True, cwd=tmp_path,
                             env={**env, **changes}, timeout=300)  # fmt: skip
        assert out.returncode == code, f"xt {' '.join(args)}\n{out.stdout}\n{out.stderr}"
        return out

    write_image_folder(tmp_path / "photos", per_class=10, size=(40, 52))  # 16 to train: batches of 4
    new = tmp_path / "new_photos"
    new.mkdir()
    for i in range(3):
        pil_image(seed=10 + i).save(new / f"{i}.png")
    file, state = torchvision_weights(tmp_path / "torch", "resnet18")
    common = ["--data", "image-folder", "--data-opt", "root=photos", "--data-opt", "image_size=32",
              "--data-opt", "num_workers=0", "--batch-size", "4", "--epochs", "1", "-q"]  # fmt: skip

    # frozen: every parameter but the new head is the cached file's, exactly, after fine-tuning
    run = xt("run", "--model", "resnet18", "--model-opt", "weights=DEFAULT", "--model-opt", "freeze=True",
             *common, "--save-dir", "frozen")  # fmt: skip
    assert "classifier 'fc' is replaced by a new Linear(in_features=512, out_features=2" in run.stderr
    trained = torch.load(tmp_path / "frozen" / "checkpoints" / "last.pt", weights_only=True)["model"]
    names = dict(models.resnet18().named_parameters())
    assert all(torch.equal(trained[k], state[k]) for k in names if not k.startswith("fc."))
    # not frozen: fine-tuned from those weights (lr 1e-3, one epoch: close to them, not equal)
    xt("run", "--model", "resnet18", "--model-opt", "weights=DEFAULT", *common, "--save-dir", "tuned")
    trained = torch.load(tmp_path / "tuned" / "checkpoints" / "last.pt", weights_only=True)["model"]
    moved = (trained["conv1.weight"] - state["conv1.weight"]).abs().max()
    assert 0 < moved < 0.05

    # the run records the weights' preprocessing (resize 256 -> 36 for a crop of 32), and applies it
    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    expected = {"resize": 36, "crop": 32, "interpolation": "bilinear", "mean": [0.485, 0.456, 0.406],
                "std": [0.229, 0.224, 0.225]}  # fmt: skip
    assert config["info"]["preprocessing"] == expected and config["data"]["resolved"]["preprocessing"]
    file.unlink()  # xt test, predict and export rebuild the model without the pretrained file
    xt("test", "tuned", "--split", "val")
    xt("predict", "tuned", "--input", "new_photos", "-o", "predictions.csv")
    net = models.resnet18(num_classes=2).eval()
    net.load_state_dict(
        torch.load(tmp_path / "tuned" / "checkpoints" / "best.pt", weights_only=True)["model"]
    )
    transform = models.ResNet18_Weights.DEFAULT.transforms(crop_size=32, resize_size=36)
    with open(tmp_path / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    for row in rows:
        with torch.no_grad():
            p = net(transform(Image.open(tmp_path / row["path"]).convert("RGB"))[None]).softmax(1)[0]
        assert [float(row["p_cat"]), float(row["p_dog"])] == pytest.approx(p.tolist(), abs=1e-5)
    xt("export", "tuned")  # the graph normalises: it takes the resized, cropped [0, 1] pixels
    session = onnxruntime.InferenceSession(str(tmp_path / "tuned" / "model.onnx"))
    x = transform(Image.open(new / "0.png").convert("RGB"))[None]
    raw = x * torch.tensor(expected["std"])[:, None, None] + torch.tensor(expected["mean"])[:, None, None]
    (exported,) = session.run(None, {session.get_inputs()[0].name: raw.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(exported), net(x), atol=1e-4, rtol=1e-4)

    # timm: a model by name, its pretrained file, timm's preprocessing, a timm optimizer and scheduler
    assert "timm.resnet18 " in xt("list", "models", "timm.resnet1*").stdout
    import timm

    torch.manual_seed(2)
    timm_state = timm.create_model("resnet18").state_dict()
    torch.save(timm_state, tmp_path / "timm_resnet18.pth")
    xt("run", "--model", "timm.resnet18", "--model-opt", "pretrained=True", "--model-opt", "freeze=True",
       "--model-opt", "pretrained_cfg_overlay={'file': 'timm_resnet18.pth'}", "--optimizer", "lamb",
       "--scheduler", "timm.cosine", "--scheduler-opt", "warmup_epochs=1", *common, "--epochs", "2",
       "--save-dir", "timm")  # fmt: skip
    trained = torch.load(tmp_path / "timm" / "checkpoints" / "last.pt", weights_only=True)["model"]
    names = dict(timm.create_model("resnet18").named_parameters())
    assert all(torch.equal(trained[k], timm_state[k]) for k in names if not k.startswith("fc."))
    config = json.loads((tmp_path / "timm" / "config.json").read_text())
    assert config["info"]["preprocessing"]["interpolation"] == "bicubic"  # timm's resnet18.a1_in1k
    assert config["optimizer"]["source"] == config["model"]["source"] == "xt-timm 0.1.0"
    history = json.loads((tmp_path / "timm" / "history.json").read_text())
    assert [row["lr"] for row in history][0] == 1e-5  # the warmup's first epoch, then timm's cosine
    (tmp_path / "timm_resnet18.pth").unlink()  # not needed to predict with the run's model
    xt("predict", "timm", "--input", "new_photos", "-o", "timm.csv")
    with open(tmp_path / "timm.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
