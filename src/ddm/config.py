"""Settings as frozen dataclasses. The CLI and preset files only fill these in.

``CondenseConfig.resolved()`` turns the method's defaults (docs/method.md) into explicit values;
every run writes the resolved settings to ``config.json`` next to its outputs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .settings import check_value, setting, shared, value_type

__all__ = [
    "CondenseConfig",
    "EvalConfig",
    "METHODS",
    "BASES",
    "FORMS",
    "DEFAULT_FORM",
    "PRECISIONS",
    "ADJUSTABLE_ON_RESUME",
    "config_from_dict",
    "check_finite",
    "check_stated_method_settings",
    "available_presets",
    "load_preset",
    "check_settings",
    "restated_defaults",
    "PRESET_IDENTITY",
]

METHODS = ("dm", "ddm", "idm", "ncfm")
BASES = ("dm", "idm", "ncfm")
IMAGE_OPTIMIZERS = ("sgd", "adamw")
INITS = ("real", "noise")
TAPS = ("act", "conv")
MOMENT_ESTIMATORS = ("batch", "persample")
# L_CM's distance between mean Gram matrices (ddm.losses.CORRELATION_FORMS): sum (published)
# | cosine (scale-free; docs/guide/stability.md)
CORRELATION_FORMS = ("sum", "cosine")
# w_cm where a form leaves it to the correlation distance: the published 1e4 for sum; 1e3 for
# cosine, which gives its gradient the published term's size on CIFAR-10 at the start of a
# run (ipc 10, conv tap; docs/guide/stability.md)
CORRELATION_WEIGHTS = {"sum": 1e4, "cosine": 1e3}
# auto: bf16 autocast where the hardware runs it fast, else fp32 (ddm.runtime.resolve_precision)
PRECISIONS = ("auto", "fp32", "bf16")
# auto for both (docs/results/precision.md, docs/performance.md): sets condensed in bf16
# scored within 0.5 points of float32 ones on CIFAR-10 (DM and DDM, 2 seeds x 3 models), and
# the same sets trained in bf16 within 0.16 points; with bf16's pooling backward in closed form,
# bf16 condensation and training are faster at every image size measured (8 x 8 to 64 x 64)
DEFAULT_PRECISION = "auto"
DEFAULT_EVAL_PRECISION = "auto"
PRECISION_HELP = (
    "auto | fp32 | bf16; auto: bf16 where the hardware has bf16 units, a short probe measures "
    "bf16 faster than float32 and the images are >= 8 pixels across, else fp32"
)
DEVICE_HELP = "auto | cpu | cuda[:N]"

# Settings a resumed run may change from its checkpoint on when asked to by name
# (``condense(..., allow_changes=...)``, ``--allow-change``): they change what the remaining
# iterations compute, not the state a checkpoint holds, so a run that diverged can go on with
# a lower learning rate or lower term weights. Each change is recorded in meta.json.
ADJUSTABLE_ON_RESUME = ("lr_img", "momentum", "w_mm", "w_cm", "w_icd", "w_cd", "w_sd", "ce_weight")

# DDM's two published forms (docs/method.md, 'DDM, paper form' and 'DDM, released form'): each
# a set of defaults for the settings a user leaves as None. A form is settings, not a branch of
# the loop.
FORMS: dict[str, dict[str, Any]] = {
    # the paper / first reference code: moments of batch-averaged post-ReLU maps, KL diversity
    "paper": {
        "style_tap": "act",
        "moments": "batch",
        "moments_relative": False,
        "correlation": "sum",
        "w_mm": 1e4,
        "w_cm": 1e4,
        "w_icd": 10.0,
        "w_cd": 0.0,
        "w_sd": 0.0,
    },
    # the authors' current repository: conv tap, per-sample relative moments, bounded spread
    "released": {
        "style_tap": "conv",
        "moments": "persample",
        "moments_relative": True,
        "correlation": "cosine",  # the published form: "sum" (docs/guide/stability.md)
        "w_mm": 180.0,
        "w_cm": None,  # by the correlation distance (CORRELATION_WEIGHTS)
        "w_icd": 0.0,
        "w_cd": 30.0,
        "w_sd": 0.0,
    },
}
# What `--method ddm` gives without --form: the form that measured best on CIFAR-10 at every
# budget measured (docs/results/ddm-vs-dm.md: e.g. paper +1.88 over DM, released +0.82, both
# seeds paired, 2,000 iterations, 1,000-epoch evaluation).
DEFAULT_FORM = "paper"

# Per-method defaults for settings left as None (docs/method.md, 'DM', 'DDM' and 'IDM'). DM
# and IDM carry no DDM term; their tap/estimator settings are inert and filled with the paper
# form's.
_NO_TERMS = {"w_mm": 0.0, "w_cm": 0.0, "w_icd": 0.0, "w_cd": 0.0, "w_sd": 0.0}
_METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "dm": {**FORMS["paper"], **_NO_TERMS},
    "idm": {**FORMS["paper"], **_NO_TERMS},
    "ncfm": {**FORMS["paper"], **_NO_TERMS},
}
_BASE_DEFAULTS: dict[str, dict[str, Any]] = {
    "dm": {"lr_img": 1.0, "factor": 1, "ce_weight": 0.0},
    "idm": {"lr_img": 0.2, "factor": 2, "ce_weight": 0.5},
    # docs/method.md, 'NCFM': AdamW lr 1e-3, factor 2, one CE step per class (weight 1)
    "ncfm": {
        "lr_img": 1e-3,
        "factor": 2,
        "ce_weight": 1.0,
        "optimizer_img": "adamw",
        "num_freqs": 4096,
    },
}


def _shown(value: Any) -> str:
    """A default as the help shows it: true/false, 1e-3 as 0.001, 1.0 as 1."""
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def _by_method(name: str) -> str:
    """The default of a setting the method, form or base fills, as the help shows it."""
    if name == "base":
        return "dm; idm and ncfm for methods idm and ncfm"
    if any(name in block for block in _BASE_DEFAULTS.values()):
        values = [
            f"{b} {_shown(block[name])}" for b, block in _BASE_DEFAULTS.items() if name in block
        ]
        return "by base: " + ", ".join(values)
    values = []
    for form, block in FORMS.items():
        if block[name] is None:  # w_cm of a form that leaves it to the correlation distance
            by = ", ".join(f"{k} {_shown(w)}" for k, w in CORRELATION_WEIGHTS.items())
            values.append(f"{form} by correlation ({by})")
        else:
            values.append(f"{form} {_shown(block[name])}")
    return "by form: " + ", ".join(values)


@dataclass(frozen=True)
class CondenseConfig:
    """Everything that decides a condensation run's result (and a few speed switches)."""

    dataset: str = setting("digits", help="dataset name")
    data_root: str | None = setting(None, help="folder holding the dataset's files")
    # only for image folders (resize target)
    image_size: int | None = setting(None, help="resize target for image-folder datasets")
    # train images per class held out (never condensed from), for tuning without the test
    # set: `ddm evaluate --holdout N` tests on them (Dataset.holdout)
    holdout: int = setting(
        0,
        help="train images per class held out, never condensed from (for tuning: `ddm evaluate "
        "--holdout N` tests on them); 0: none",
    )
    ipc: int = setting(10, help="images per class")
    method: str = setting("dm", help=" | ".join(METHODS))
    # None: idm/ncfm for methods idm/ncfm, else dm
    base: str | None = setting(
        None, help="base of ddm: " + " | ".join(BASES), shown=lambda: _by_method("base")
    )
    iterations: int = setting(20000, help="condensation iterations")
    batch_real: int = setting(256, help="real images per class and iteration")
    lr_img: float | None = setting(
        None, help="image learning rate", shown=lambda: _by_method("lr_img")
    )
    momentum: float = setting(0.5, help="image optimiser momentum")
    init: str = setting("real", help=" | ".join(INITS))
    model: str = setting("convnet", help="matching network")
    # ConvNet depth; None: by resolution (3 for 32, 4 for 64, 5 for 128)
    depth: int | None = setting(None, help="ConvNet depth", shown="by resolution")
    dsa: bool = setting(True, help="Siamese augmentation on/off")
    seed: int = setting(0, help="random seed")
    # DDM terms (None: the form's default; 0 removes the term and its cost)
    form: str | None = setting(
        None,
        help="DDM's form: " + " | ".join(FORMS) + "; sets the defaults of DDM's settings",
        shown=lambda: DEFAULT_FORM,
    )
    style_tap: str | None = setting(
        None,
        help="DDM style maps: act (after ReLU) | conv (before norm)",
        shown=lambda: _by_method("style_tap"),
    )
    moments: str | None = setting(
        None,
        help="DDM moments estimator: batch (moments of the mean map) | persample",
        shown=lambda: _by_method("moments"),
    )
    moments_relative: bool | None = setting(
        None,
        help="DDM moment distances relative to the target's mean square",
        shown=lambda: _by_method("moments_relative"),
    )
    # L_CM's distance: sum (published: sum of squared Gram differences) | cosine (scale-free)
    correlation: str | None = setting(
        None,
        help="DDM Gram distance: sum (published) | cosine (scale-free)",
        shown=lambda: _by_method("correlation"),
    )
    w_mm: float | None = setting(None, help="DDM moments weight", shown=lambda: _by_method("w_mm"))
    w_cm: float | None = setting(
        None, help="DDM correlation weight", shown=lambda: _by_method("w_cm")
    )
    w_icd: float | None = setting(
        None, help="DDM KL diversity weight", shown=lambda: _by_method("w_icd")
    )
    # None: max(1, round(0.2 ipc)), capped at ipc - 1
    icd_k: int | None = setting(
        None, help="DDM diversity neighbours", shown="round(0.2 x images per class)"
    )
    # gradient through the neighbour mean (the reference's)
    icd_neighbour_grad: bool = setting(
        True, help="gradient through the neighbour mean (reference: true)"
    )
    w_cd: float | None = setting(
        None, help="DDM bounded spread weight L_CD", shown=lambda: _by_method("w_cd")
    )
    cd_rank: int = setting(0, help="L_CD principal directions (0: min(images per class - 1, 16))")
    w_sd: float | None = setting(
        None, help="DDM style-spread weight L_SD", shown=lambda: _by_method("w_sd")
    )
    # DDM's term weights x D / 2048 (D: the matching network's embedding size), so that they
    # weigh against L_MMD as calibrated on CIFAR-10 (D = 2048, where the factor is exactly 1;
    # docs/guide/stability.md); false: the weights as given (the published behaviour)
    weights_by_embedding: bool = setting(
        True,
        help="DDM term weights x D / 2048 (D: the embedding size; 1 for every ConvNet at 32 px "
        "or more), as calibrated against L_MMD; false: the published weights as given",
    )
    # IDM base (docs/method.md, 'IDM'; None: the base's default)
    factor: int | None = setting(
        None, help="IDM partition/expansion factor", shown=lambda: _by_method("factor")
    )
    ce_weight: float | None = setting(
        None,
        help="IDM class-aware regularisation weight",
        shown=lambda: _by_method("ce_weight"),
    )
    net_init: int = setting(3, help="IDM queue models at the start")
    net_num: int = setting(100, help="IDM queue capacity")
    net_generate_interval: int = setting(30, help="IDM iterations between new queue models")
    fetch_net_num: int = setting(2, help="IDM queue models trained per iteration")
    model_train_steps: int = setting(10, help="IDM SGD steps per trained queue model")
    model_batch: int = setting(256, help="IDM real images per queue-training step")
    model_lr: float = setting(0.01, help="IDM queue-model learning rate")
    # NCFM base (docs/method.md, 'NCFM'; None: the base's default, unused on other bases)
    pool: str | None = setting(None, help="NCFM: folder of trained networks made by `ddm pool`")
    num_freqs: int | None = setting(
        None,
        help="NCFM: Gaussian frequencies per class and iteration",
        shown=lambda: _by_method("num_freqs"),
    )
    optimizer_img: str | None = setting(
        None,
        help="NCFM image optimiser: " + " | ".join(IMAGE_OPTIMIZERS) + " (sgd uses --lr-img "
        "and --momentum)",
        shown=lambda: _by_method("optimizer_img"),
    )
    ncfm_sampler: bool | None = setting(
        None,
        help="NCFM: frequencies from a sampler network trained to maximise the loss (64 "
        "frequencies, 4 distinct; one process only)",
        shown="false",
    )
    # precision of the network's forward (changes the result slightly); a run records the
    # resolved fp32 | bf16 in config.json and meta.json
    precision: str = setting(DEFAULT_PRECISION, help=PRECISION_HELP, choices=PRECISIONS)
    # run management and speed (do not change the result)
    device: str = setting("auto", help=DEVICE_HELP)
    checkpoint_every: int = setting(500, help="iterations between checkpoints (0: only at the end)")
    real_chunk: int = setting(0, help="real images per no-grad forward (0: automatic)")
    channels_last: bool = setting(False, help="channels-last memory format", switch=True)
    compile: bool = setting(
        False,
        help="torch.compile the network's embedding (DM, IDM: about 0.85-0.9x a DM iteration on "
        "CPU after a first iteration that compiles; DDM's style passes stay eager; needs a C++ "
        "compiler)",
        switch=True,
    )

    def resolved(self) -> CondenseConfig:
        """Fill method/base defaults and validate; raises ValueError with what to do."""
        check_finite(self)
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; known: {', '.join(METHODS)}")
        base = self.base or (self.method if self.method in ("idm", "ncfm") else "dm")
        if base not in BASES:
            raise ValueError(f"unknown base {base!r}; known: {', '.join(BASES)}")
        if self.method == "dm" and base != "dm":
            raise ValueError(
                f"method dm runs on the dm base; use --method {base} or --method ddm --base {base}"
            )
        if self.method in ("idm", "ncfm") and base != self.method:
            raise ValueError(f"method {self.method} runs on the {self.method} base")
        if self.method != "ddm":
            terms = [n for n in _TERM_WEIGHTS if (getattr(self, n) or 0) > 0]
            if terms:
                raise ValueError(
                    f"method {self.method} has no DDM terms, but {', '.join(terms)} > 0 is "
                    f"given; use --method ddm{'' if base == 'dm' else ' --base ' + base}, or "
                    "leave the DDM weights out"
                )
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"--seed must be an integer in [0, 2^63), got {self.seed}")
        if self.momentum < 0:
            raise ValueError(f"--momentum must be >= 0, got {self.momentum}")
        if self.image_size is not None and self.image_size <= 0:
            raise ValueError(f"--image-size must be positive, got {self.image_size}")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; known: {', '.join(INITS)}")
        for name in ("ipc", "iterations", "batch_real"):
            if getattr(self, name) <= 0:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}"
                )
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"unknown precision {self.precision!r}; known: {', '.join(PRECISIONS)}"
            )
        if self.checkpoint_every < 0:
            raise ValueError("--checkpoint-every must be >= 0 (0 = only at the end)")
        if self.holdout < 0:
            raise ValueError(f"--holdout must be >= 0 images per class, got {self.holdout}")
        if self.method == "ddm":
            form = self.form or DEFAULT_FORM
            if form not in FORMS:
                raise ValueError(f"unknown form {form!r}; known: {', '.join(FORMS)}")
            method_defaults = FORMS[form]
        else:
            if self.form is not None:
                raise ValueError(f"--form applies to --method ddm, not {self.method}")
            form, method_defaults = None, _METHOD_DEFAULTS[self.method]
        filled: dict[str, Any] = {"base": base, "form": form}
        for key, value in {**method_defaults, **_BASE_DEFAULTS[base]}.items():
            if getattr(self, key) is None:
                filled[key] = value
        out = dataclasses.replace(self, **filled)
        if out.w_cm is None:  # the form leaves it to the correlation distance
            out = dataclasses.replace(out, w_cm=CORRELATION_WEIGHTS.get(out.correlation, 0.0))
        for name in _TERM_WEIGHTS:
            if getattr(out, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0")
        if out.method == "ddm" and all(getattr(out, n) == 0 for n in _TERM_WEIGHTS):
            raise ValueError(
                "method ddm with every DDM term weight 0 (w_mm, w_cm, w_icd, w_cd, w_sd) is DM "
                "under another name; use --method dm, or leave the weights out to take the "
                "form's (a dm run's config.json states them as 0)"
            )
        if out.style_tap not in TAPS:
            raise ValueError(f"unknown style tap {out.style_tap!r}; known: {', '.join(TAPS)}")
        if out.moments not in MOMENT_ESTIMATORS:
            raise ValueError(
                f"unknown moments estimator {out.moments!r}; known: {', '.join(MOMENT_ESTIMATORS)}"
            )
        if out.correlation not in CORRELATION_FORMS:
            raise ValueError(
                f"unknown correlation distance {out.correlation!r}; "
                f"known: {', '.join(CORRELATION_FORMS)}"
            )
        if out.cd_rank < 0:
            raise ValueError("--cd-rank must be >= 0 (0: min(images per class - 1, 16))")
        if out.lr_img <= 0:
            raise ValueError("--lr-img must be positive")
        if out.factor < 1 or (out.factor > 1 and base == "dm"):
            raise ValueError("--factor must be >= 1, and above 1 only on the idm or ncfm base")
        if out.ce_weight < 0 or (out.ce_weight > 0 and base == "dm"):
            raise ValueError("--ce-weight must be >= 0, and above 0 only on the idm or ncfm base")
        if base == "ncfm":
            if not out.pool:
                raise ValueError(
                    "the ncfm base needs --pool DIR, a pool of trained networks "
                    "(make one with `ddm pool --dataset D --out DIR`)"
                )
            if out.num_freqs <= 0:
                raise ValueError("--num-freqs must be positive")
            if out.optimizer_img not in IMAGE_OPTIMIZERS:
                raise ValueError(
                    f"unknown image optimiser {out.optimizer_img!r}; "
                    f"known: {', '.join(IMAGE_OPTIMIZERS)}"
                )
        elif any(getattr(out, k) is not None for k in ("pool", "num_freqs", "optimizer_img")):
            raise ValueError("--pool, --num-freqs and --optimizer-img apply to the ncfm base only")
        elif out.ncfm_sampler:
            raise ValueError("--ncfm-sampler applies to the ncfm base only")
        for name in (
            "net_init",
            "net_num",
            "net_generate_interval",
            "fetch_net_num",
            "model_train_steps",
            "model_batch",
        ):
            if getattr(out, name) <= 0 and not (
                name in ("fetch_net_num", "model_train_steps") and getattr(out, name) == 0
            ):
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _recipe_names() -> tuple[str, ...]:
    from .recipes import RECIPES

    return tuple(RECIPES)


def _recipe_help() -> str:
    from .recipes import RECIPES

    return "optimiser, schedule and augmentation of the trained models: " + "; ".join(
        f"{k}: {r.summary}" for k, r in RECIPES.items()
    )


@dataclass(frozen=True)
class EvalConfig:
    """The field's evaluation protocol (docs/method.md, 'Evaluation protocol'); reducible."""

    model: str = setting("convnet", help="architecture")
    # ConvNet depth; None: by resolution
    depth: int | None = setting(None, help="ConvNet depth", shown="by resolution")
    epochs: int = setting(1000, help="training epochs per model")
    runs: int = setting(5, help="models trained")
    # optimiser settings; None: the recipe's (``ddm.recipes``; dm: 0.01, 0.9, 5e-4, 256)
    lr: float | None = setting(None, help="learning rate", shown="the recipe's")
    momentum: float | None = setting(None, help="SGD momentum", shown="the recipe's")
    weight_decay: float | None = setting(None, help="weight decay", shown="the recipe's")
    batch_size: int | None = setting(None, help="batch size", shown="the recipe's")
    # False: no augmentation at all (no DSA, no CutMix): DD-Ranking's "noaug"
    dsa: bool = setting(True, help="augmentation on/off (false: none at all)")
    seed: int = setting(0, help="seed of the trained models", flag="eval-seed")
    device: str = shared(CondenseConfig, "device")
    # the training's forward
    precision: str = shared(CondenseConfig, "precision", DEFAULT_EVAL_PRECISION)
    # 0: test on the test split; N: on the N train images per class the set was condensed
    # without (its --holdout), for tuning without the test set
    holdout: int = setting(
        0,
        help="test on the N train images per class the set was condensed without (its "
        "--holdout) instead of the test split, for tuning; 0: the test split",
    )
    # optimiser, schedule and mixing: a key of ddm.recipes.RECIPES
    recipe: str = setting("dm", help=_recipe_help, choices=_recipe_names, flag="eval-recipe")
    labels: str = setting(
        "hard",
        help="hard: cross-entropy on class labels; soft: KL to a teacher's soft labels",
        choices=("hard", "soft"),
    )
    # soft labels: M, the teacher on every batch; S, stored per image
    soft_label_mode: str = setting(
        "M",
        help="soft labels: M, the teacher labels every augmented batch on the fly; S, the "
        "per-image soft labels stored in the set (DD-Ranking's modes)",
        choices=("M", "S"),
    )
    temperature: float | None = setting(
        None, help="softmax temperature of the soft-label KL loss", shown="the recipe's"
    )
    # the teacher folder (soft labels, mode M); the command line names it with --teacher or
    # --teachers-dir
    teacher: str | None = None

    def __post_init__(self) -> None:
        check_finite(self)
        from .recipes import get_recipe

        if self.epochs <= 0 or self.runs <= 0:
            raise ValueError("--epochs and --runs must be positive")
        get_recipe(self.recipe)
        if self.labels not in ("hard", "soft"):
            raise ValueError(f"unknown --labels {self.labels!r}; known: hard, soft")
        if self.soft_label_mode not in ("M", "S"):
            raise ValueError(f"unknown --soft-label-mode {self.soft_label_mode!r}; known: M, S")
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError(f"--temperature must be positive, got {self.temperature}")
        if self.holdout < 0:
            raise ValueError(f"--holdout must be >= 0 images per class, got {self.holdout}")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"unknown precision {self.precision!r}; known: {', '.join(PRECISIONS)}"
            )

    def training(self):
        """The recipe with this config's optimiser overrides applied (a ``Recipe``)."""
        from .recipes import get_recipe

        recipe = get_recipe(self.recipe)
        given = {
            k: getattr(self, k)
            for k in ("lr", "momentum", "weight_decay", "batch_size", "temperature")
            if getattr(self, k) is not None
        }
        return dataclasses.replace(recipe, **given)

    def to_dict(self) -> dict[str, Any]:
        """The settings, with the recipe's values filled in; the soft-label settings are
        None under hard labels (so hard-label entries read as they always did)."""
        out = dataclasses.asdict(self)
        recipe = self.training()
        for key in ("lr", "momentum", "weight_decay", "batch_size"):
            out[key] = getattr(recipe, key)
        if self.labels == "hard":
            out.update(soft_label_mode=None, temperature=None, teacher=None)
        else:
            out["temperature"] = recipe.temperature
            if self.soft_label_mode == "S":
                out["teacher"] = None
        return out


def check_finite(settings: Any) -> None:
    """Raise ValueError for a NaN or infinite float setting of a settings dataclass (a NaN
    weight would silently switch its term off, and NaN compares false with every bound)."""
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")


# The settings a method, form or base fills when left out (CondenseConfig.resolved).
_TERM_WEIGHTS = ("w_mm", "w_cm", "w_icd", "w_cd", "w_sd")
_FORM_SETTINGS = ("style_tap", "moments", "moments_relative", *_TERM_WEIGHTS)
_BASE_SETTINGS = ("lr_img", "factor", "ce_weight")


def _filled_by(method: str, form: str | None, base: str | None) -> dict[str, Any] | None:
    """The values ``resolved`` fills for (method, form, base); None for an unknown name."""
    base = base or (method if method in ("idm", "ncfm") else "dm")
    if method not in METHODS or base not in BASES:
        return None
    if method == "ddm":
        if (form or DEFAULT_FORM) not in FORMS:
            return None
        block = FORMS[form or DEFAULT_FORM]
    else:
        block = _METHOD_DEFAULTS[method]
    return {**block, **_BASE_DEFAULTS[base]}


def check_stated_method_settings(values: dict[str, Any], where: str) -> None:
    """Refuse settings (a config file's) that name one method or form but state, key for key,
    what another fills: a saved config.json whose ``method`` or ``form`` was edited.

    A saved run states every setting its method and form filled in; changing only ``method:
    dm`` to ``ddm`` (or ``form: paper`` to ``released``) would keep the old method's values
    and run it under the new name. Settings that state only some of them are left alone
    (what they leave out, the named method or form fills).
    """
    if "method" not in values and "form" not in values:
        return
    method, form, base = values.get("method", "dm"), values.get("form"), values.get("base")
    named = _filled_by(method, form, base)
    if named is None:
        return  # an unknown name: resolved() says so
    for keys in (_FORM_SETTINGS, _BASE_SETTINGS):
        if not all(k in values for k in keys):
            continue
        stated = {k: values[k] for k in keys}
        if stated == {k: named[k] for k in keys}:
            continue
        for other_method in METHODS:
            for other_form in (*FORMS, None) if other_method == "ddm" else (None,):
                for other_base in BASES:
                    filled = _filled_by(other_method, other_form, other_base)
                    if filled is None or stated != {k: filled[k] for k in keys}:
                        continue
                    if (other_method, other_form) == (method, form) and keys == _FORM_SETTINGS:
                        continue
                    label = other_method + (f" (form {other_form})" if other_form else "")
                    if keys == _BASE_SETTINGS:
                        label = f"the {other_base} base"
                    now = method + (f" (form {form})" if form else "")
                    raise ValueError(
                        f"{where}: method {now}, but {', '.join(keys)} are exactly what "
                        f"{label} fills in (as a saved run's config.json states them); remove "
                        f"those keys to take {now}'s defaults, or give the method that matches"
                    )


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Build a config dataclass from a dict, rejecting unknown keys with the known ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return cls(**values)


def parse_value(text: str) -> bool | int | float | str:
    """A KEY=VALUE value: 'true'/'false' -> bool, numbers -> int/float, else the string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["model_train_steps=5", "dsa=false"]`` -> ``{"model_train_steps": 5, "dsa": False}``.

    Keys may use dashes (``model-batch``); a malformed item raises ValueError.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        out[key.replace("-", "_")] = parse_value(text)
    return out


def parse_row(spec: str, rows: dict[str, tuple[str, dict[str, Any]]]) -> tuple[str, str, dict]:
    """A benchmark row: a name from ``rows`` or ``name=method:key=value,...`` -> (name, method,
    settings). Raises ValueError naming the known rows."""
    if spec in rows:
        return (spec, *rows[spec])
    if "=" not in spec:
        raise ValueError(f"unknown row {spec!r}; known: {', '.join(rows)} or name=method:k=v,...")
    name, rest = spec.split("=", 1)
    method, _, kv = rest.partition(":")
    return name, method, parse_overrides(filter(None, kv.split(",")))


def available_presets() -> list[str]:
    """Names of the shipped preset files (src/ddm/presets/*.json)."""
    from importlib.resources import files

    return sorted(
        p.name[:-5] for p in files("ddm").joinpath("presets").iterdir() if p.name.endswith(".json")
    )


def load_preset(name: str) -> dict[str, Any]:
    """A preset: {"description", "source", "settings"}; unknown names list the known ones."""
    import json
    from importlib.resources import files

    known = available_presets()
    if name not in known:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(known)}")
    preset = json.loads(files("ddm").joinpath("presets", f"{name}.json").read_text())
    check_settings(CondenseConfig, preset["settings"], f"preset {name}")
    unknown = set(preset.get("per_setting", ())) - set(preset["settings"])
    if unknown:
        raise ValueError(f"preset {name}: per_setting names unstated {', '.join(sorted(unknown))}")
    return preset


# What names a preset (kept even where a default says the same); every other key of a preset
# states only what differs from what its method, form and base fill (``restated_defaults``),
# or is listed in the preset's "per_setting": the settings its source gives per dataset and
# images per class (e.g. IDM's ce_weight), stated even where one equals the default.
PRESET_IDENTITY = ("dataset", "method", "form", "base", "ipc")


def check_settings(cls: type, values: dict[str, Any], where: str) -> None:
    """Refuse unknown keys, values of the wrong type and values outside a flag's choices,
    as the fields of ``cls`` declare them (``ddm.settings``); one ValueError line."""
    try:
        config_from_dict(cls, values)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    for key, value in values.items():
        kind, optional = value_type(cls, key)
        if value is None and optional:
            continue
        checked = check_value(f"{where}: {key}", value, kind)
        meta = next(f for f in dataclasses.fields(cls) if f.name == key).metadata.get("flag")
        choices = meta.choices() if meta and callable(meta.choices) else meta and meta.choices
        if choices and checked not in choices:
            raise ValueError(f"{where}: {key}: expected one of {', '.join(choices)}, got {value!r}")


def restated_defaults(settings: dict[str, Any], keep: Iterable[str] = ()) -> list[str]:
    """The keys of condensation ``settings`` (other than ``PRESET_IDENTITY`` and ``keep``) that
    state what the dataclass, method, form or base would fill anyway: leaving each out, one
    after the other, resolves to the same ``CondenseConfig``."""
    want = CondenseConfig(**settings).resolved()
    kept, restated = dict(settings), []
    for key in settings:
        if key in PRESET_IDENTITY or key in keep:
            continue
        trial = {k: v for k, v in kept.items() if k != key}
        try:
            same = CondenseConfig(**trial).resolved() == want
        except ValueError:  # a setting the method needs stated (e.g. ncfm's pool)
            same = False
        if same:
            kept = trial
            restated.append(key)
    return restated
