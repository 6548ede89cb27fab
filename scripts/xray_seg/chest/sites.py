"""One datalist over several sites (hospitals), each case keeping its site.

    xray-seg manifest sites --output_file data_manifests/cxr_lungs_sites.json \
        montgomery=data_manifests/montgomery.json:montgomery \
        jsrt=data_manifests/jsrt_scr.json:jsrt_scr:right_lung+left_lung

Each part is ``SITE=MANIFEST:FOLDER[:STRUCTURES]``: a per-site manifest (built with
``xray-seg manifest images``), the site's folder inside the data root, and, for a
multi-label manifest, the structures whose masks together form the target (``+``
between names; the lung target of JSRT/SCR is its right and left lung masks).

The per-site manifests keep their own train/validation/test splits, so the combined
splits are stratified by site (each site contributes its own shares), and a site's
test cases stay the ones its single-site manifest already holds back: figures stay
comparable with earlier single-site models. Paths become relative to the data root,
and each item gets a ``"site"`` key, which ``xray_seg.shared.splits.load_split``
can filter on (leave-one-site-out training and cross-site evaluation).

Items whose label is a list of masks are merged into one channel at load time
(``Lambdad`` with a channel maximum in the bundle config).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from xray_seg.shared.splits import SPLITS, ManifestError


@dataclass(frozen=True)
class SitePart:
    site: str
    manifest: Path
    folder: str
    structures: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "SitePart":
        """``SITE=MANIFEST:FOLDER[:STRUCTURE+STRUCTURE...]``."""
        site, sep, rest = text.partition("=")
        fields = rest.split(":")
        if not sep or not site or len(fields) not in (2, 3) or not all(fields[:2]):
            raise ManifestError(
                f"site part {text!r}: expected SITE=MANIFEST:FOLDER[:STRUCTURE+STRUCTURE], "
                "e.g. jsrt=data_manifests/jsrt_scr.json:jsrt_scr:right_lung+left_lung"
            )
        structures = tuple(s for s in fields[2].split("+") if s) if len(fields) == 3 else ()
        return cls(site, Path(fields[0]), fields[1], structures)


def _target(item: dict, part: SitePart, manifest: dict) -> str | list[str]:
    """The item's label path(s) for the combined manifest, relative to the data root."""
    label = item["label"]
    if isinstance(label, str):
        if part.structures:
            raise ManifestError(f"{part.manifest}: single-label manifest, but structures {part.structures} were named")
        return str(PurePosixPath(part.folder) / label)
    names = manifest.get("structures") or []
    if not part.structures:
        raise ManifestError(
            f"{part.manifest}: multi-label manifest ({', '.join(names)}); name the structures that form "
            f"the target, e.g. {part.site}=...:{part.folder}:{'+'.join(names[:2])}"
        )
    unknown = [s for s in part.structures if s not in names]
    if unknown:
        raise ManifestError(f"{part.manifest}: no structure {', '.join(unknown)}; it has {', '.join(names)}")
    return [str(PurePosixPath(part.folder) / label[names.index(s)]) for s in part.structures]


def combine_sites(parts: list[SitePart], name: str = "multi-site") -> dict:
    """The combined datalist of ``parts`` (see the module docstring)."""
    if not parts:
        raise ManifestError("no sites given")
    sites = [p.site for p in parts]
    if len(set(sites)) != len(sites):
        raise ManifestError(f"a site is named twice: {', '.join(sites)}")
    combined: dict[str, list[dict]] = {split: [] for split in SPLITS}
    described = []
    for part in parts:
        try:
            manifest = json.loads(part.manifest.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ManifestError(f"{part.manifest}: cannot be read: {e}") from e
        if any("fold" in item for item in manifest.get("training", [])):
            raise ManifestError(f"{part.manifest}: k-fold manifests cannot be combined; use one with a validation split")
        counts = []
        for split in SPLITS:
            for item in manifest.get(split, []):
                combined[split].append({
                    "image": str(PurePosixPath(part.folder) / item["image"]),
                    "label": _target(item, part, manifest),
                    "site": part.site,
                })
            counts.append(f"{len(manifest.get(split, []))} {split}")
        target = f", target {' + '.join(part.structures)}" if part.structures else ""
        described.append(f"{part.site} ({part.folder}/, from {part.manifest.name}: {', '.join(counts)}{target})")
    return {
        "name": name,
        "description": (
            "sites " + "; ".join(described) + ". Paths relative to the data root; each site keeps the "
            "splits of its own manifest (so the splits are stratified by site); a list of label masks "
            "is merged into one lung mask"
        ),
        "tensorImageSize": "2D",
        "labels": {"0": "background", "1": "lung"},
        "sites": sites,
        "numTraining": len(combined["training"]),
        "numValidation": len(combined["validation"]),
        "numTest": len(combined["testing"]),
        **{split: sorted(items, key=lambda i: i["image"]) for split, items in combined.items()},
    }
