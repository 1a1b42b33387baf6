"""CLI sub-commands of the data layer: ``ingest``, ``synth``, ``shards verify``, ``shards stats``.

Heavy libraries (torch, monai, SimpleITK) are imported inside the handlers only.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

log = logging.getLogger(__name__)

MODALITIES = ("ct", "mri", "pet")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults only where there is one worth showing (not None / False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or "%(default)" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def register(sub: argparse._SubParsersAction) -> None:
    _register_ingest(sub)
    _register_synth(sub)
    _register_shards(sub)


# ---------------------------------------------------------------------------------------------
# ingest


def _register_ingest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest",
        help="read scans (NIfTI/NRRD/MHA/DICOM), preprocess per modality, write WebDataset shards",
        description=(
            "Read scans from --input folders/files (searched recursively for .nii, .nii.gz, .nrrd, "
            ".nhdr, .mha, .mhd and DICOM series folders) or from a --manifest CSV, reorient to RAS, "
            "crop to foreground, normalise per modality, resample to the domain spacing and write "
            "SHARDS_DIR/<domain>/{train,val}-NNNNNN.tar plus SHARDS_DIR/index.json. Re-running "
            "resumes: cases already in the index are skipped. Bad scans are logged, counted and "
            "recorded under 'skipped' in index.json."
        ),
        formatter_class=_Help,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", metavar="PATH", help="scan files or folders (recursive)")
    src.add_argument(
        "--manifest", metavar="FILE.csv",
        help="CSV with columns path, modality, domain and optional case_id, split (relative paths: from the CSV)",
    )
    p.add_argument("--modality", choices=MODALITIES, help="modality of every --input scan (required with --input)")
    p.add_argument("--domain", help="domain name for --input scans (letters, digits, _ and -)")
    p.add_argument("--out", required=True, metavar="SHARDS_DIR", help="shards folder (index.json lives here)")
    p.add_argument("--spacing", nargs=3, type=float, metavar=("X", "Y", "Z"),
                   help="target voxel spacing in mm (default: 1.5 iso for ct/mri, 2.0 iso for pet)")
    p.add_argument("--workers", type=int, default=1, help="processes reading and preprocessing cases")
    p.add_argument("--val-fraction", type=float, default=0.1, help="fraction of case ids hashed into val")
    p.add_argument("--frames", choices=("error", "first"), default="error",
                   help="4-D inputs: skip them as an error, or take the first frame")
    p.add_argument("--shard-size", type=int, default=32, help="volumes per shard")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored voxel type")
    p.add_argument("--codec", choices=("blosc2", "zstd", "raw"), default="blosc2", help="volume compression")
    p.add_argument("--overwrite", action="store_true", help="replace the domain's existing shards and index entry")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_ingest)


def _run_ingest(args: argparse.Namespace) -> int:
    from .ingest import cases_from_inputs, cases_from_manifest, ingest

    if args.input:
        if not args.modality or not args.domain:
            raise ValueError("--input needs --modality and --domain (or use --manifest)")
        cases = cases_from_inputs(args.input, args.domain, args.modality)
    else:
        if args.modality or args.domain:
            raise ValueError("--modality/--domain come from the manifest's columns; do not pass them with --manifest")
        cases = cases_from_manifest(args.manifest)
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    try:
        summary = ingest(
            cases, args.out, spacing=args.spacing, workers=args.workers, val_fraction=args.val_fraction,
            overwrite=args.overwrite, frames=args.frames, shard_size=args.shard_size, dtype=args.dtype,
            codec=args.codec, progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        print(f"interrupted: finished shards are recorded in {args.out}/index.json; "
              "run the same command again to resume", file=sys.stderr)
        return 130
    for domain, s in summary.items():
        print(f"{domain} ({s['modality']}): {s['written']} written, {s['already']} already ingested, {s['skipped']} skipped")
        for f in s["skipped_files"]:
            print(f"  skipped {f['path']}: {f['reason']}")
    print(f"index: {args.out}/index.json")
    return 0


# ---------------------------------------------------------------------------------------------
# synth


def _register_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="write procedural phantom domains (CT/MRI/PET-like) as shards, for tests and the demo",
        description="Procedural phantom volumes with modality-specific contrast sharing one anatomy, "
        "written through the same shard writer as ingest.",
        formatter_class=_Help,
    )
    p.add_argument("--out", required=True, metavar="SHARDS_DIR", help="shards folder")
    p.add_argument("--domains", default="ct,mri,pet", help="comma-separated phantom domains")
    p.add_argument("--cases", type=int, default=8, help="volumes per domain")
    p.add_argument("--size", type=int, default=64, help="edge length of each cubic volume (voxels)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--overwrite", action="store_true", help="replace existing phantom domains")
    p.add_argument("--labels", metavar="TASKS_DIR",
                   help="also write phantom lesion tasks (classification CSV + Decathlon-layout segmentation) to TASKS_DIR")
    p.set_defaults(func=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    from .synth import write_phantom_shards

    domains = [d.strip() for d in args.domains.split(",") if d.strip()]
    if not domains:
        raise ValueError("--domains is empty")
    if args.cases < 1 or args.size < 8:
        raise ValueError(f"--cases must be >= 1 and --size >= 8, got {args.cases}, {args.size}")
    result = write_phantom_shards(args.out, domains, args.cases, args.size, seed=args.seed, overwrite=args.overwrite)
    if result is not None:
        log.debug("synth result: %s", result)
    print(f"wrote {len(domains)} phantom domain(s) x {args.cases} case(s) to {args.out}")
    if args.labels:
        from mixpretrain.eval.phantom_tasks import write_phantom_tasks

        # at least 4 cases so both classes appear in both splits
        write_phantom_tasks(args.labels, max(args.cases, 4), args.size, seed=args.seed, overwrite=args.overwrite)
        print(f"wrote phantom lesion tasks to {args.labels}")
    return 0


# ---------------------------------------------------------------------------------------------
# shards verify / stats


def _register_shards(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shards", help="inspect a shards folder: verify, stats")
    ssub = p.add_subparsers(dest="shards_command", metavar="ACTION", required=True)
    v = ssub.add_parser(
        "verify",
        help="check every shard in index.json: present, size, sha256, every sample decodable",
        description="Exit 0 when every shard is intact; exit 1 naming each missing, truncated or corrupted shard.",
    )
    v.add_argument("shards_dir", metavar="SHARDS_DIR", help="local shards folder (not a URL: every file is read)")
    v.add_argument("--domains", help="comma-separated subset of domains")
    v.add_argument("--quick", action="store_true", help="sizes and checksums only, no decoding")
    v.set_defaults(func=_run_verify)
    s = ssub.add_parser("stats", help="per-domain and per-split sample counts, shard counts, sizes, skips")
    s.add_argument("shards_dir", metavar="SHARDS_DIR", help="shards folder, or http(s):// URL of one (reads index.json only)")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(func=_run_stats)


def _run_verify(args: argparse.Namespace) -> int:
    from .shards import index_location, is_url, load_index, orphans, verify

    if is_url(args.shards_dir):
        raise ValueError(f"verify needs a local shards folder, not the URL {args.shards_dir}: it reads every shard "
                         "file and its SHA-256 (run it where the shards are stored, or on a downloaded copy)")
    index = load_index(args.shards_dir)
    domains = [d.strip() for d in args.domains.split(",") if d.strip()] if args.domains else None
    if domains is not None:
        unknown = [d for d in domains if d not in index["domains"]]
        if unknown or not domains:
            raise ValueError(f"--domains {args.domains!r}: {unknown or 'no domain named'} not in "
                             f"{index_location(args.shards_dir)} (has {sorted(index['domains'])})")
    problems = verify(args.shards_dir, domains, deep=not args.quick)
    for f in orphans(args.shards_dir):
        print(f"note: {f} is not in index.json (left by an interrupted run?); readers ignore it", file=sys.stderr)
    n = sum(len(index["domains"][d]["shards"]) for d in (domains or index["domains"]) if d in index["domains"])
    for prob in problems:
        print(f"BAD {prob['file']}: {prob['problem']}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} of {n} shard(s) failed verification", file=sys.stderr)
        return 1
    print(f"all {n} shard(s) OK")
    return 0


def _human(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024 or unit == "GB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return f"{nbytes:.1f} TB"


def _run_stats(args: argparse.Namespace) -> int:
    from .shards import load_index, stats

    rows = stats(args.shards_dir)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    index = load_index(args.shards_dir)
    print(f"{'domain':20s} {'modality':8s} {'split':5s} {'samples':>8s} {'shards':>6s} {'size':>10s}  spacing")
    for r in rows:
        spacing = "x".join(f"{v:g}" for v in r["spacing"]) if r["spacing"] else "-"
        print(f"{r['domain']:20s} {r['modality']:8s} {r['split']:5s} {r['samples']:8d} {r['shards']:6d} {_human(r['bytes']):>10s}  {spacing}")
    total = sum(r["samples"] for r in rows)
    print(f"total: {total} samples in {len(index['domains'])} domain(s), {index.get('skipped', 0)} skipped input(s)")
    for name, entry in sorted(index["domains"].items()):
        for f in entry.get("skipped_files", []):
            print(f"  skipped [{name}] {f['path']}: {f['reason']}")
    return 0
