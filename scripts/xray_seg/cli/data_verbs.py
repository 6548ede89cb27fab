"""``xray-seg manifest images|volumes`` and ``xray-seg synthetic cxr|tomo``: data in, manifests out."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from xray_seg.shared.errors import UserError
from xray_seg.shared.outputs import check_output_file
from xray_seg.shared.splits import ManifestError, write_manifest


def register_manifest(verbs: argparse._SubParsersAction) -> None:
    manifest = verbs.add_parser("manifest", help="write a data manifest (train/validation/test split) of a dataset",
                                description="Write a data manifest (JSON datalist) of a dataset folder.")
    kinds = manifest.add_subparsers(dest="kind", required=True, metavar="KIND")

    images = kinds.add_parser(
        "images", help="2D images with masks (chest radiographs)",
        description="Split a folder of 2D images and masks into training, validation and test cases (or k folds).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )  # fmt: skip
    _common(images)
    images.add_argument("--folds", type=int, default=0, help="K > 1: k-fold cross-validation on the non-test cases")
    images.add_argument("--images", default="images", help="image folder inside dataset_dir")
    images.add_argument("--masks", default="masks", help="mask folder inside dataset_dir")
    images.add_argument("--stratify", help=r"regex on file stems giving each case's stratum, e.g. '_(\d)$'")
    images.add_argument("--structures", help="comma-separated structure names, one mask folder each in the masks "
                        "folder (multi-label), e.g. right_lung,left_lung,heart,right_clavicle,left_clavicle")
    images.set_defaults(run=manifest_images)

    volumes = kinds.add_parser(
        "volumes", help="3D volumes or slice stacks with labels (tomography), split into slabs",
        description="Split tomography volumes (or one slice stack, into slabs) into training, validation and test.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )  # fmt: skip
    _common(volumes)
    volumes.add_argument("--images", default="images", help="image slice folder, or folder of volumes, in dataset_dir")
    volumes.add_argument("--labels", default="labels", help="label slice folder, or folder of volumes, in dataset_dir")
    volumes.add_argument("--gap", type=int, default=8, help="unused slices between neighbouring slabs")
    volumes.set_defaults(run=manifest_volumes)

    sites = kinds.add_parser(
        "sites", help="one 2D manifest over several sites, each case keeping its site",
        description="Combine per-site manifests into one (paths relative to the data root, a 'site' key per case); "
                    "each site keeps its own splits.",
    )  # fmt: skip
    sites.add_argument("parts", nargs="+", metavar="SITE=MANIFEST:FOLDER[:STRUCTURES]",
                       help="a site's manifest and its folder in the data root; for a multi-label manifest the "
                            "structures forming the target joined by '+', e.g. "
                            "jsrt=data_manifests/jsrt_scr.json:jsrt_scr:right_lung+left_lung")
    sites.add_argument("--output_file", type=Path, required=True, help="manifest to write")
    sites.add_argument("--name", default="multi-site", help="manifest name")
    sites.set_defaults(run=manifest_sites)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset_dir", type=Path, required=True, help="the dataset folder")
    p.add_argument("--output_file", type=Path, required=True, help="manifest to write, e.g. data_manifests/NAME.json")
    p.add_argument("--seed", type=int, default=0, help="seed of the split")
    p.add_argument("--val_fraction", type=float, default=0.1, help="validation share (unused with --folds)")
    p.add_argument("--test_fraction", type=float, default=0.2, help="test share")
    p.add_argument("--name", help="manifest name (default: the dataset folder's name)")


def _write(manifest: dict, output_file: Path) -> None:
    write_manifest(output_file, manifest)  # checks the destination again, writes atomically


def _refuse(err: ManifestError) -> UserError:
    return UserError(f"{err}\nnothing written")


def manifest_images(args: argparse.Namespace) -> int:
    from xray_seg.chest.manifest import build_manifest

    structures = None if args.structures is None else [s.strip() for s in args.structures.split(",")]
    check_output_file(args.output_file)  # before the slow scan of every image
    try:
        manifest = build_manifest(
            args.dataset_dir, images=args.images, masks=args.masks, seed=args.seed,
            val_fraction=args.val_fraction, test_fraction=args.test_fraction, folds=args.folds,
            name=args.name, stratify=args.stratify, structures=structures,
        )  # fmt: skip
    except ManifestError as err:
        raise _refuse(err) from None
    _write(manifest, args.output_file)
    folds = f" in {args.folds} folds" if args.folds else ""
    print(f"wrote {args.output_file}: {manifest['numTraining']} training{folds}, "
          f"{manifest['numValidation']} validation, {manifest['numTest']} testing")
    return 0


def manifest_volumes(args: argparse.Namespace) -> int:
    from xray_seg.tomography.slab_manifest import build_slab_manifest

    check_output_file(args.output_file)  # before every volume is opened
    try:
        manifest = build_slab_manifest(
            args.dataset_dir, images=args.images, labels=args.labels, val_fraction=args.val_fraction,
            test_fraction=args.test_fraction, gap=args.gap, seed=args.seed, name=args.name,
        )  # fmt: skip
    except ManifestError as err:
        raise _refuse(err) from None
    _write(manifest, args.output_file)
    print(f"wrote {args.output_file}: {manifest['description']}")
    return 0


def manifest_sites(args: argparse.Namespace) -> int:
    from xray_seg.chest.sites import SitePart, combine_sites

    check_output_file(args.output_file)
    try:
        manifest = combine_sites([SitePart.parse(p) for p in args.parts], name=args.name)
    except ManifestError as err:
        raise _refuse(err) from None
    _write(manifest, args.output_file)
    print(f"wrote {args.output_file}: {manifest['numTraining']} training, {manifest['numValidation']} validation, "
          f"{manifest['numTest']} testing from sites {', '.join(manifest['sites'])}")
    return 0


def register_synthetic(verbs: argparse._SubParsersAction) -> None:
    synthetic = verbs.add_parser("synthetic", help="generate synthetic data with exact labels",
                                 description="Generate synthetic datasets with exact labels.")
    kinds = synthetic.add_subparsers(dest="kind", required=True, metavar="KIND")
    defaults = argparse.ArgumentDefaultsHelpFormatter

    cxr = kinds.add_parser("cxr", help="chest radiographs with lung masks (images/, masks/)", formatter_class=defaults,
                           description="Synthetic chest radiographs with exact lung masks, in images/ and masks/.")
    cxr.add_argument("--output_dir", type=Path, required=True, help="dataset folder to write")
    cxr.add_argument("--n_cases", type=int, default=24, help="cases to generate")
    cxr.add_argument("--size", type=int, default=256, help="image side in pixels")
    cxr.add_argument("--seed", type=int, default=0)
    cxr.add_argument("--bit_depth", type=int, choices=(8, 16), default=8)
    cxr.set_defaults(run=synthetic_cxr)

    tomo = kinds.add_parser("tomo", help="a simulated tomography volume with its three-phase labels",
                            formatter_class=defaults,
                            description="A simulated tomography volume (phantom, projections, noise, filtered "
                                        "back-projection) with its labels; or, with --benchmark, the generator's speed.")
    tomo.add_argument("--output_dir", type=Path, help="folder to write image and label into (not with --benchmark)")
    tomo.add_argument("--shape", type=int, nargs=3, default=(64, 128, 128), metavar=("Z", "Y", "X"))
    tomo.add_argument("--seed", type=int, default=0)
    tomo.add_argument("--format", choices=("tiff", "slices"), default="tiff", help="one TIFF stack or slice folders")
    tomo.add_argument("--chunk", type=int, default=16, help="slices reconstructed at a time")
    tomo.add_argument("--n_angles", type=int, default=None, help="projection angles (default: from the size)")
    tomo.add_argument("--photons", type=float, default=None, help="photons per detector pixel (Poisson noise)")
    tomo.add_argument("--feature_size", type=float, default=8.0, help="phase feature size in voxels")
    tomo.add_argument("--device", default=None, help="torch device of the simulation")
    tomo.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    tomo.add_argument("--benchmark", action="store_true", help="time the generator at --sizes instead")
    tomo.add_argument("--sizes", type=int, nargs="+", default=(256, 512, 1024), help="cube sides for --benchmark")
    tomo.set_defaults(run=synthetic_tomo)


def synthetic_cxr(args: argparse.Namespace) -> int:
    from xray_seg.synthetic.cxr import generate_dataset

    start = time.perf_counter()
    names = generate_dataset(args.output_dir, args.n_cases, args.size, args.seed, args.bit_depth)
    print(f"wrote {len(names)} synthetic cases ({args.size}x{args.size}, {args.bit_depth}-bit) "
          f"to {args.output_dir} in {time.perf_counter() - start:.1f}s")
    return 0


def synthetic_tomo(args: argparse.Namespace) -> int:
    from xray_seg.synthetic.tomo import benchmark, default_n_angles, generate_volume

    if args.benchmark:
        benchmark(args.sizes, n_angles=args.n_angles, device=args.device, threads=args.threads)
        return 0
    if args.output_dir is None:
        raise UserError("synthetic tomo needs --output_dir (or --benchmark)")
    start = time.perf_counter()
    paths = generate_volume(args.output_dir, args.shape, args.seed, args.format, args.chunk, args.n_angles,
                            args.photons, args.feature_size, device=args.device, threads=args.threads)
    elapsed = time.perf_counter() - start
    nz, ny, nx = args.shape
    print(f"image: {paths['image']}\nlabel: {paths['label']}")
    print(f"wrote {nz}x{ny}x{nx} (z, y, x) in {elapsed:.1f}s ({elapsed / nz * 1000:.0f} ms/slice, "
          f"{args.n_angles or default_n_angles(max(ny, nx))} angles)")
    return 0
