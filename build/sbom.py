#!/usr/bin/env python3
"""SPDX 2.3 SBOM of one architecture's image, from the same inputs the image is built from.

    sbom.py generate --arch amd64|arm64 --rootfs DIR --binary FILE [--version V] --out FILE.spdx.json
    sbom.py check    --arch amd64|arm64 --rootfs DIR --binary FILE FILE.spdx.json

The image holds two things, and the SBOM lists both:
- the static `apparmor-loader`: every crate it links, i.e. `cargo tree -e normal,no-proc-macro --target <triple>`
  (no build, dev or proc-macro crates), with version, declared license (`cargo metadata`), the `Cargo.lock`
  checksum and a purl; plus the executable itself with its SHA-256;
- the Debian packages whose files the image carries: `usr/share/doc/apparmor-profile-loader/debian-packages` in
  the rootfs, which build/parser-rootfs.sh writes from the very .debs it unpacked (package, version, arch,
  suite, .deb SHA-256), with a purl (`pkg:deb/debian/...`).

`check` recomputes both lists from cargo and the rootfs and fails if the SBOM misses any crate or .deb (or has
another version, architecture or checksum), if the executable's checksum differs, or if a required SPDX field is
missing. Only the standard library: it runs with any python3.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timezone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRIPLES = {"amd64": "x86_64-unknown-linux-gnu", "arm64": "aarch64-unknown-linux-gnu"}
MANIFEST = "usr/share/doc/apparmor-profile-loader/debian-packages"
NAME = "apparmor-profile-loader"


# === inputs ===


def cargo(*args):
    out = subprocess.run(
        ["cargo", *args], cwd=REPO, check=True, capture_output=True, text=True
    )
    return out.stdout


def linked_crates(arch):
    """{(name, version)} of every crate the executable for `arch` links."""
    out = cargo(
        "tree", "--locked", "-e", "normal,no-proc-macro", "--target", TRIPLES[arch],
        "--prefix", "none", "--format", "{p}",
    )
    crates = set()
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 2 and words[1].startswith("v"):
            crates.add((words[0], words[1][1:]))
    if not crates:
        raise SystemExit("sbom.py: cargo tree listed no crates")
    return crates


def crate_metadata():
    """{(name, version): (license, source)} from `cargo metadata`."""
    meta = json.loads(cargo("metadata", "--locked", "--format-version", "1"))
    return {
        (p["name"], p["version"]): (p.get("license") or "NOASSERTION", p.get("source"))
        for p in meta["packages"]
    }


def lock_checksums():
    """{(name, version): sha256} from Cargo.lock (crates.io crates carry one)."""
    sums, cur = {}, {}
    with open(os.path.join(REPO, "Cargo.lock")) as f:
        for line in f.read().splitlines() + ["[[package]]"]:
            if line == "[[package]]":
                if "checksum" in cur:
                    sums[(cur["name"], cur["version"])] = cur["checksum"]
                cur = {}
            elif " = " in line:
                k, v = line.split(" = ", 1)
                cur[k] = v.strip('"')
    return sums


def debian_packages(rootfs, arch):
    """[(package, version, arch, suite, sha256, file)] from the manifest parser-rootfs.sh wrote."""
    path = os.path.join(rootfs, MANIFEST)
    try:
        lines = open(path).read().splitlines()
    except OSError as e:
        raise SystemExit(f"sbom.py: cannot read the rootfs's package manifest: {e}")
    pkgs = [tuple(line.split()) for line in lines if line.strip()]
    for p in pkgs:
        if len(p) != 6:
            raise SystemExit(f"sbom.py: {path}: malformed line {' '.join(p)!r}")
        if p[2] != arch:
            raise SystemExit(f"sbom.py: {path}: {p[0]} {p[1]} is for {p[2]}, not {arch}")
    if not pkgs:
        raise SystemExit(f"sbom.py: {path} lists no package")
    return pkgs


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def spdx_id(*parts):
    raw = "-".join(parts)
    return "SPDXRef-" + "".join(c if c.isalnum() or c in ".-" else "-" for c in raw)


# === generate ===


def generate(arch, rootfs, binary, version):
    meta, sums = crate_metadata(), lock_checksums()
    image_id = spdx_id("image", arch)
    exe_id = spdx_id("executable", arch)
    packages = [
        {
            "SPDXID": image_id,
            "name": f"{NAME} image linux/{arch}",
            "versionInfo": version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "primaryPackagePurpose": "CONTAINER",
        },
        {
            "SPDXID": exe_id,
            "name": "apparmor-loader",
            "versionInfo": version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "checksums": [{"algorithm": "SHA256", "checksumValue": sha256(binary)}],
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "Apache-2.0",
            "copyrightText": "NOASSERTION",
            "primaryPackagePurpose": "APPLICATION",
            "comment": f"/usr/local/bin/apparmor-loader, static, target {TRIPLES[arch]}",
        },
    ]
    rels = [
        {"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": image_id},
        {"spdxElementId": image_id, "relationshipType": "CONTAINS", "relatedSpdxElement": exe_id},
    ]
    for name, ver in sorted(linked_crates(arch)):
        if name == NAME:
            continue  # the executable itself, above
        lic, source = meta.get((name, ver), ("NOASSERTION", None))
        pid = spdx_id("crate", name, ver)
        pkg = {
            "SPDXID": pid,
            "name": name,
            "versionInfo": ver,
            "downloadLocation": f"https://crates.io/api/v1/crates/{name}/{ver}/download"
            if source and source.startswith("registry+")
            else "NOASSERTION",
            "filesAnalyzed": False,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": lic.replace("/", " OR ") if lic != "NOASSERTION" else lic,
            "copyrightText": "NOASSERTION",
            "externalRefs": [
                {"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                 "referenceLocator": f"pkg:cargo/{name}@{ver}"}
            ],
            "primaryPackagePurpose": "LIBRARY",
        }
        if (name, ver) in sums:
            pkg["checksums"] = [{"algorithm": "SHA256", "checksumValue": sums[(name, ver)]}]
        packages.append(pkg)
        rels.append({"spdxElementId": exe_id, "relationshipType": "STATIC_LINK", "relatedSpdxElement": pid})
    for name, ver, deb_arch, suite, digest, file in debian_packages(rootfs, arch):
        pid = spdx_id("deb", name, ver, deb_arch)
        packages.append({
            "SPDXID": pid,
            "name": name,
            "versionInfo": ver,
            "downloadLocation": "NOASSERTION",
            "packageFileName": file,
            "filesAnalyzed": False,
            "checksums": [{"algorithm": "SHA256", "checksumValue": digest}],
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "supplier": "Organization: Debian",
            "externalRefs": [
                {"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                 "referenceLocator": f"pkg:deb/debian/{name}@{ver}?arch={deb_arch}&distro={suite}"}
            ],
            "primaryPackagePurpose": "OPERATING-SYSTEM" if name == "libc6" else "APPLICATION",
            "comment": f"Debian {suite}; files unpacked by build/parser-rootfs.sh; "
            "copyright in /usr/share/doc/apparmor-profile-loader/",
        })
        rels.append({"spdxElementId": image_id, "relationshipType": "CONTAINS", "relatedSpdxElement": pid})
    created = datetime.fromtimestamp(
        int(os.environ.get("SOURCE_DATE_EPOCH", "0")) or datetime.now(timezone.utc).timestamp(), timezone.utc
    ).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{NAME}-{version}-linux-{arch}",
        "documentNamespace": f"https://example.com/spdx/{NAME}/{version}/linux-{arch}/{uuid.uuid4()}",
        "creationInfo": {"created": created, "creators": ["Tool: apparmor-profile-loader build/sbom.py"]},
        "packages": packages,
        "relationships": rels,
    }


# === check ===


def check(doc, arch, rootfs, binary):
    """Problems found in `doc` (empty when complete)."""
    problems = []
    for field in ("spdxVersion", "dataLicense", "SPDXID", "name", "documentNamespace", "creationInfo"):
        if field not in doc:
            problems.append(f"document field {field} missing")
    if doc.get("spdxVersion") != "SPDX-2.3":
        problems.append(f"spdxVersion is {doc.get('spdxVersion')!r}, not SPDX-2.3")
    pkgs = doc.get("packages", [])
    ids = [p.get("SPDXID") for p in pkgs]
    if len(ids) != len(set(ids)):
        problems.append("duplicate SPDXIDs")
    for p in pkgs:
        for field in ("SPDXID", "name", "downloadLocation", "versionInfo"):
            if not p.get(field):
                problems.append(f"package {p.get('name')!r}: {field} missing")
    by_purl = {
        r["referenceLocator"]: p for p in pkgs for r in p.get("externalRefs", [])
        if r.get("referenceType") == "purl"
    }
    meta = crate_metadata()
    for name, ver in sorted(linked_crates(arch)):
        if name == NAME:
            continue
        p = by_purl.get(f"pkg:cargo/{name}@{ver}")
        if p is None:
            problems.append(f"crate {name} {ver} (linked per cargo tree) is not in the SBOM")
        elif p.get("licenseDeclared") in (None, "", "NOASSERTION") and meta.get((name, ver), ("NOASSERTION",))[0] != "NOASSERTION":
            problems.append(f"crate {name} {ver}: license missing")
    for name, ver, deb_arch, suite, digest, _ in debian_packages(rootfs, arch):
        p = by_purl.get(f"pkg:deb/debian/{name}@{ver}?arch={deb_arch}&distro={suite}")
        if p is None:
            problems.append(f"Debian package {name} {ver} ({deb_arch}, {suite}) is not in the SBOM")
        elif {"algorithm": "SHA256", "checksumValue": digest} not in p.get("checksums", []):
            problems.append(f"Debian package {name} {ver}: checksum differs from the .deb unpacked")
    exe = sha256(binary)
    if not any({"algorithm": "SHA256", "checksumValue": exe} in p.get("checksums", []) and p.get("name") == "apparmor-loader" for p in pkgs):
        problems.append(f"the executable {binary} (sha256 {exe}) is not in the SBOM")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["generate", "check"])
    ap.add_argument("--arch", required=True, choices=sorted(TRIPLES))
    ap.add_argument("--rootfs", required=True)
    ap.add_argument("--binary", required=True)
    ap.add_argument("--version", default="0.1.0")
    ap.add_argument("--out")
    ap.add_argument("sbom", nargs="?")
    a = ap.parse_intermixed_args()
    if a.mode == "generate":
        if not a.out:
            ap.error("generate needs --out")
        doc = generate(a.arch, a.rootfs, a.binary, a.version)
        with open(a.out + ".tmp", "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
        os.replace(a.out + ".tmp", a.out)
        crates = sum(1 for p in doc["packages"] if p["SPDXID"].startswith("SPDXRef-crate-"))
        debs = sum(1 for p in doc["packages"] if p["SPDXID"].startswith("SPDXRef-deb-"))
        print(f"sbom.py: {a.out}: linux/{a.arch}, {crates} crates, {debs} Debian packages")
        return 0
    if not a.sbom:
        ap.error("check needs the SBOM file")
    problems = check(json.load(open(a.sbom)), a.arch, a.rootfs, a.binary)
    for p in problems:
        print(f"sbom.py: {a.sbom}: {p}")
    if problems:
        return 1
    print(f"sbom.py: {a.sbom}: complete (every linked crate, every .deb, the executable)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
