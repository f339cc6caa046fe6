"""`novacron-image`: build the tiny guest image and list an image directory."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict

from agent.images.builder import build_tiny_image
from agent.images.catalog import DEFAULT_IMAGES_DIR, ImageCatalog
from shared.errors import NovaCronError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="novacron-image", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the tiny guest image (from Debian packages only)")
    build.add_argument("name", nargs="?", default="tiny", help="image name (default: tiny)")
    build.add_argument("--output", default=str(DEFAULT_IMAGES_DIR), help="images directory")
    build.add_argument("--force", action="store_true", help="rebuild even if it exists")
    build.add_argument(
        "--arch",
        default="",
        help="guest architecture: x86_64 (amd64) or aarch64 (arm64); default: this host's. "
        "Another architecture's kernel and busybox come from its Debian packages",
    )
    lst = sub.add_parser("list", help="list the images of a directory")
    lst.add_argument("--dir", default=str(DEFAULT_IMAGES_DIR), help="images directory")
    lst.add_argument("-o", "--output", choices=("table", "json"), default="table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "build":
            path = build_tiny_image(args.output, args.name, force=args.force, arch=args.arch)
            print(path)
            return 0
        images = ImageCatalog(args.dir).list()
        if args.output == "json":
            print(json.dumps([asdict(i) for i in images], indent=2))
        else:
            print(f"{'NAME':<20} {'KIND':<8} {'ARCH':<8} {'SIZE':>10}")
            for i in images:
                print(f"{i.name:<20} {i.kind:<8} {i.arch:<8} {i.size_bytes / 2**20:>8.1f}Mi")
        return 0
    except NovaCronError as err:
        print(f"novacron-image: {err.code}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
