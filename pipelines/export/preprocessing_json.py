"""The contents of ``preprocessing.json``: what an exported network takes and gives back.

An exported file runs one patch of a preprocessed image; everything else ``medseg
predict`` does is described here as data, so it can be redone without medseg. The
preprocessing steps are read from the very transforms ``medseg predict`` builds for the
model (``inference_transforms``), not restated by hand, so the description cannot drift
from the code; a step this module does not know is still listed, by its class name.
"""

from __future__ import annotations

from typing import Any

from monai import transforms as mt

from medseg import __version__
from medseg.pipelines.model_dir import ModelConfig, NetworkSpec
from medseg.transforms import presets
from medseg.transforms.checks import RequireUsableImaged
from medseg.transforms.slices import AdjacentSlicesd

INPUT_NAME, OUTPUT_NAME = "image", "logits"
INTENSITY_STEPS = ("threshold", "z-score", "z-score_body", "scale_percentiles")

# Crop selections by rule: the functions' names say what, these say exactly which voxels.
_CROP_RULES = {
    presets.is_body: f"voxels > {presets.CT_BODY_THRESHOLD:g} (HU) in any channel",
    presets.is_positive: "voxels > 0 in any channel",
    presets.is_above_background: f"voxels whose value smoothed by a Gaussian of "
    f"{presets.BODY_SMOOTHING:g} voxel is > {presets.BODY_FRACTION:g} x their channel's "
    f"{presets.BODY_PERCENTILE:g}th percentile in any channel",
}


def describe(config: ModelConfig, spec: NetworkSpec) -> dict[str, Any]:
    """The format-independent part of ``preprocessing.json`` for ``config``'s model with
    network ``spec``: network, input and output tensors, preprocessing (a summary and the
    ordered steps), sliding window, label scheme and how logits become a label map.
    Returns JSON-ready data.
    """
    pre = config.preprocessing
    patch = list(config.inference.roi_size)
    steps = preprocessing_steps(config)
    axes = ", ".join(f"axis {k}" for k in range(len(patch)))
    return {
        "medseg_version": __version__,
        "network": spec.model_dump(mode="json"),
        "input": {
            "name": INPUT_NAME,
            "dtype": "float32",
            "shape": ["batch", spec.in_channels, *patch],
            "layout": f"(batch, channel, {axes}): a patch of the preprocessed image array, "
            "channels as preprocessing.channels (times preprocessing.slices for 2.5D)",
        },
        "output": {
            "name": OUTPUT_NAME,
            "dtype": "float32",
            "shape": ["batch", spec.out_channels, *patch],
            "layout": "(batch, label channel, the input's spatial axes): logits, channels "
            "as labels.names",
        },
        "preprocessing": {
            "layout": pre.layout,
            "modality": pre.modality,
            "channels": list(pre.channels),
            "slices": pre.slices,
            "orientation": pre.orientation[: pre.spatial_dims],
            "spacing": pre.spacing,
            "foreground_crop": pre.foreground_crop,
            "normalisation": {
                "modality": pre.modality,
                "statistics": dict(pre.intensity),
                "steps": [step for step in steps if step["step"] in INTENSITY_STEPS],
            },
            "steps": steps,
        },
        "patch_size": patch,
        "sliding_window": {
            "roi_size": patch,
            "overlap": config.inference.overlap,
            "blending": config.inference.mode,
            "meaning": "run the file on overlapping patches of roi_size covering the "
            "preprocessed image (padded to at least roi_size) and blend their logits; a "
            "2D network on a volume runs on one slice at a time along the last axis",
        },
        "labels": config.scheme.to_dict(),
        "postprocessing": _postprocessing(config),
    }


def preprocessing_steps(config: ModelConfig) -> list[dict[str, Any]]:
    """The deterministic steps from a file to the network's input, in order, each a dict
    with ``step`` (its kind) and its parameters, read from ``inference_transforms``.
    """
    pipeline = presets.inference_transforms(config.preprocessing).transforms
    return [step for step in map(_describe_step, pipeline) if step is not None]


def _describe_step(transform: Any) -> dict[str, Any] | None:
    if isinstance(transform, mt.LoadImaged | mt.EnsureTyped):
        return None
    if isinstance(transform, RequireUsableImaged):
        return {
            "step": "require_usable",
            "meaning": "refuse images with NaN or infinite voxels or a single constant value",
        }
    if isinstance(transform, mt.Orientationd):
        return {
            "step": "orientation",
            "axcodes": transform.ornt_transform.axcodes,
            "meaning": "reorder and flip the array axes so that the index along axis k "
            "increases towards letter k (RAS: Right, Anterior, Superior), as "
            "nibabel.as_closest_canonical does",
        }
    if isinstance(transform, mt.Spacingd):
        return {
            "step": "resample",
            "spacing": [float(size) for size in transform.spacing_transform.pixdim],
            "interpolation": str(transform.mode[0]),
            "meaning": "resample to this voxel size in mm (bilinear: linear along every "
            "axis); 0 keeps that axis as it is",
        }
    if isinstance(transform, mt.CropForegroundd):
        select = transform.cropper.select_fn
        return {
            "step": "crop_foreground",
            "select": _CROP_RULES.get(select, getattr(select, "__name__", repr(select))),
            "margin": transform.cropper.margin,
            "meaning": "crop to the bounding box of the selected voxels",
        }
    if isinstance(transform, mt.ThresholdIntensityd):
        rule = transform.filter
        return {
            "step": "threshold",
            "keep": f"{'>' if rule.above else '<'} {rule.threshold:g}",
            "otherwise": rule.cval,
            "meaning": "voxels outside the kept range are set to 'otherwise' (a clip)",
        }
    if isinstance(transform, mt.NormalizeIntensityd):
        rule = transform.normalizer
        return {
            "step": "z-score",
            "subtract": rule.subtrahend,
            "divide_by": rule.divisor,
            "nonzero_only": bool(rule.nonzero),
            "channel_wise": bool(rule.channel_wise),
            "meaning": "(x - subtract) / divide_by; null means the image's own mean (std), "
            "over its non-zero voxels when nonzero_only (zeros stay 0), per channel when "
            "channel_wise",
        }
    if isinstance(transform, presets.ZScoreBodyd):
        return {
            "step": "z-score_body",
            "body": _CROP_RULES[presets.is_above_background].replace("in any channel", ""),
            "meaning": "per channel, (x - mean) / std over the channel's body voxels; 0 "
            "outside the body",
        }
    if isinstance(transform, mt.ScaleIntensityRangePercentilesd):
        rule = transform.scaler
        return {
            "step": "scale_percentiles",
            "percentiles": [rule.lower, rule.upper],
            "to": [rule.b_min, rule.b_max],
            "clip": bool(rule.clip),
            "channel_wise": bool(rule.channel_wise),
            "meaning": "map the image's own percentiles linearly onto 'to'",
        }
    if isinstance(transform, AdjacentSlicesd):
        return {
            "step": "adjacent_slices",
            "slices": transform.slices,
            "meaning": "channel c * slices + k of slice z is channel c of slice "
            "z + k - slices // 2 (edge slices repeated), for a 2D network on volumes",
        }
    return {"step": type(transform).__name__}


def _postprocessing(config: ModelConfig) -> dict[str, Any]:
    scheme = config.scheme
    if scheme.mode == "regions":
        rule = {
            "activation": "sigmoid",
            "threshold": 0.5,
            "label_map": "start from 0 (background); for each channel k in "
            "labels.paint_order, set labels.paint[k] where its probability > threshold",
        }
    else:
        rule = {
            "activation": "softmax",
            "label_map": "write labels.values[k][0] of the most probable channel k",
        }
    return rule | {
        "order": "blend the windows' logits, apply the activation, take the probabilities "
        "back to the input's grid (undo crop, resampling and orientation; linear "
        "interpolation), make the label map, then apply rules",
        "rules": config.postprocessing.model_dump(mode="json"),
        "rules_meaning": "on the label map, in this order: keep the largest connected "
        "component of each structure in largest_component, remove components smaller than "
        "min_component_ml (ml), fill enclosed holes of fill_holes, and remove each "
        "structure of 'inside' where it does not touch its container; a structure's "
        "components include the structures inside it",
    }
