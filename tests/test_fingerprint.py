"""Dataset fingerprints notice changed data: annotation contents, added, removed and rewritten files."""
from __future__ import annotations

import json
import os
import shutil

from pinas.data.fingerprint import DigestCache, fingerprint_tree
from pinas.data.sources import DataConfig, resolve_datasets


def _user_copy(demo_data, tmp_path, kind="coco"):
    """A user's folder in the real format (the generator's own manifest removed: it is not generated data now)."""
    root = tmp_path / kind
    shutil.copytree(demo_data(kind, det_train_images=4, det_val_images=2), root)
    (root / "manifest.json").unlink()
    return root


def test_every_kind_of_change_changes_the_fingerprint(demo_data, tmp_path):
    root = _user_copy(demo_data, tmp_path)
    cache = DigestCache(tmp_path / "digests.json")
    seen = {fingerprint_tree(root, cache)}
    assert fingerprint_tree(root, DigestCache(tmp_path / "digests.json")) in seen  # unchanged: the same

    val = root / "annotations" / "instances_val2017.json"
    data = json.loads(val.read_text())
    data["categories"][0]["name"] = data["categories"][0]["name"][::-1]  # a renamed category, same length
    stat = val.stat()
    val.write_text(json.dumps(data))
    os.utime(val, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime kept
    changes = [fingerprint_tree(root, cache)]

    data["annotations"].append(dict(data["annotations"][0], id=10 ** 6))  # appended annotation
    val.write_text(json.dumps(data))
    changes.append(fingerprint_tree(root, cache))

    image = next((root / "val2017").iterdir())
    image.write_bytes(image.read_bytes()[::-1])  # same size, rewritten in place
    changes.append(fingerprint_tree(root, cache))
    shutil.copy(image, image.with_name("extra.jpg"))  # an added file
    changes.append(fingerprint_tree(root, cache))
    image.with_name("extra.jpg").unlink()
    image.rename(image.with_name("renamed.jpg"))  # a renamed file
    changes.append(fingerprint_tree(root, cache))
    assert len(seen | set(changes)) == 1 + len(changes)


def test_annotation_digests_are_cached_between_runs(demo_data, tmp_path):
    root = _user_copy(demo_data, tmp_path)
    cache_file = tmp_path / "digests.json"
    first = fingerprint_tree(root, DigestCache(cache_file))
    entries = json.loads(cache_file.read_text())
    assert len(entries) == 2 and all("instances_" in k for k in entries)  # the two annotation files, not images
    again = DigestCache(cache_file)
    assert fingerprint_tree(root, again) == first and not again._dirty  # nothing hashed the second time


def test_the_pipeline_records_the_fingerprints(demo_data, tmp_path):
    root = _user_copy(demo_data, tmp_path)
    cfg = DataConfig(source="folders", coco=root)
    before = resolve_datasets(cfg, tmp_path / "run", ("coco",))["coco"]
    label = next((root / "train2017").iterdir())
    label.write_bytes(label.read_bytes() + b"\0")
    after = resolve_datasets(cfg, tmp_path / "run", ("coco",))["coco"]
    assert before["path"] == after["path"] and before["fingerprint"] != after["fingerprint"]
    assert (tmp_path / "run" / "data" / "annotation-digests.json").is_file()
