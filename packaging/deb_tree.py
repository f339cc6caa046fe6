"""One binary package's file tree and its DEBIAN/ control area, turned into a .deb by dpkg-deb.

The control stanza and the maintainer scripts are plain files in packaging/debian/ (readable and
reviewable as shell), filled in here with the version, architecture and installed size.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

MAINTAINER_SCRIPTS = ("preinst", "postinst", "prerm", "postrm")
# zstd -9: 7 s and 31 MB for the common package, where xz takes 2 min for 26 MB on 2 cores;
# bookworm's dpkg (1.21.22) and apt read zstd members (dpkg >= 1.21.18).
COMPRESSION = ("-Zzstd", "-z9")


class PackageTree:
    """Files under `root` as they will be on the target; `build` writes DEBIAN/ and the .deb."""

    def __init__(self, root: Path, name: str, version: str, arch: str, packaging: Path) -> None:
        self.root, self.name, self.version, self.arch = root, name, version, arch
        self.templates = packaging / "debian"
        self.conffiles: list[str] = []
        self.private: set[str] = set()  # files 0600 whatever the umask (a config with a secret)
        # @KEY@ -> text in the maintainer scripts; a daemon's come from the shared daemon.* ones
        self.substitutions: dict[str, str] = {"@PACKAGE@": name}
        self.script_template = name
        root.mkdir(parents=True)

    def _path(self, rel: str) -> Path:
        path = self.root / rel.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write(self, rel: str, text: str, mode: int = 0o644) -> None:
        path = self._path(rel)
        path.write_text(text)
        path.chmod(mode)
        if mode == 0o600:
            self.private.add(rel.lstrip("/"))

    def copy(self, src: Path, rel: str, mode: int = 0o644) -> None:
        path = self._path(rel)
        shutil.copyfile(src, path)
        path.chmod(mode)
        if mode == 0o600:
            self.private.add(rel.lstrip("/"))

    def symlink(self, rel: str, target: str) -> None:
        self._path(rel).symlink_to(target)

    def conffile(self, absolute: str) -> None:
        self.conffiles.append(absolute)

    def doc_copyright(self, readme: Path) -> None:
        del readme  # the licence is the project's: say where it is and which it is
        self.write(
            f"usr/share/doc/{self.name}/copyright",
            "NovaCron Edge, https://github.com/novacron/novacron-edge\n"
            "License: Apache-2.0 (see /usr/share/common-licenses/Apache-2.0)\n",
        )

    def _normalise(self, epoch: int) -> int:
        """Modes 0755/0644 whatever the umask, mtimes = epoch; returns Installed-Size in KiB."""
        kib = 0
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in [*dirnames, *filenames]:
                path = Path(dirpath) / name
                if path.is_symlink():
                    kib += 1
                elif path.is_dir():
                    path.chmod(0o755)
                    kib += 1
                else:
                    mode = path.stat().st_mode
                    # shared objects are 0644 (Debian policy 10.9), whatever pip unpacked
                    executable = mode & 0o111 and not re.search(r"\.so(\.|$)", name)
                    private = path.relative_to(self.root).as_posix() in self.private
                    path.chmod(0o600 if private else 0o755 if executable else 0o644)
                    kib += (path.stat().st_size + 1023) // 1024
                os.utime(path, (epoch, epoch), follow_symlinks=False)
        return kib

    def _md5sums(self) -> str:
        lines = []
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and not path.is_symlink() and "DEBIAN" not in path.parts:
                digest = hashlib.md5(path.read_bytes()).hexdigest()
                lines.append(f"{digest}  {path.relative_to(self.root)}")
        return "\n".join(lines) + "\n"

    def _control(self, installed_kib: int) -> str:
        template = (self.templates / f"{self.name}.control").read_text()
        return (
            template.replace("@VERSION@", self.version)
            .replace("@ARCH@", self.arch)
            .replace("@INSTALLED_SIZE@", str(installed_kib))
        )

    def build(self, out: Path, epoch: int) -> Path:
        debian = self.root / "DEBIAN"
        debian.mkdir()
        (debian / "md5sums").write_text(self._md5sums())
        if self.conffiles:
            (debian / "conffiles").write_text("\n".join(self.conffiles) + "\n")
        for script in MAINTAINER_SCRIPTS:
            src = self.templates / f"{self.script_template}.{script}"
            if src.exists():
                text = src.read_text()
                for key, value in self.substitutions.items():
                    text = text.replace(key, value)
                if re.search(r"@[A-Z_]+@", text):
                    raise SystemExit(f"build-deb: {src}: a placeholder is left unfilled")
                (debian / script).write_text(text)
                (debian / script).chmod(0o755)
        installed_kib = self._normalise(epoch)  # the control file itself is not counted
        (debian / "control").write_text(self._control(installed_kib))
        self._normalise(epoch)
        deb = out / f"{self.name}_{self.version}_{self.arch}.deb"
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
        proc = subprocess.run(
            ["dpkg-deb", "--root-owner-group", *COMPRESSION, "--build", str(self.root), str(deb)],
            capture_output=True,
            text=True,
            env=env,
        )
        if proc.returncode != 0:
            raise SystemExit(f"build-deb: dpkg-deb failed for {self.name}:\n{proc.stderr}")
        return deb
