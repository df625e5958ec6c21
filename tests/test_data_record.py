"""The data an experiment's results came from is recorded in OUT, and data that changed under the same path
since is refused in one line (orchestrator/run/data_record.py): a text's corpus and tokenizer (through the CLI in
test_adapted_networks_cli.py), CIFAR's files by content, an image folder
by its listing. Unchanged data passes, and new data is added to the record."""
import pytest

from conftest import write_fake_cifar, write_image_folder
from orchestrator.run import data_record
from orchestrator.experiment.spec import SpecError, parse_spec


def _recorded(spec, out):
    record = data_record.checked(spec, out)
    data_record.save(out, record)
    return record


def _refused(spec, out, source):
    with pytest.raises(SpecError) as err:
        data_record.checked(spec, out)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"data.root: {source} changed since the results in {out}")
    return message


def test_cifar_files_rewritten_under_the_same_names_are_refused(tmp_path):
    root = tmp_path / "cifar"
    write_fake_cifar(root)
    spec = parse_spec({"name": "c", "data": {"dataset": "cifar10", "root": str(root)},
                       "training": {"iterations": 1, "runs": [{"network": "resnet20"}]}})
    out = tmp_path / "out"
    out.mkdir()
    assert list(_recorded(spec, out)) == [str(root / "cifar-10-batches-py")]
    assert data_record.checked(spec, out) == _recorded(spec, out)        # unchanged: accepted, the same record
    write_fake_cifar(root, seed=1)                                       # other pixels under the same names
    assert "(its content: sha256 " in _refused(spec, out, root / "cifar-10-batches-py")


def test_an_image_folder_that_gained_an_image_is_refused(tmp_path):
    root = write_image_folder(tmp_path / "images", classes=2, val_per_class=2, size=20)
    spec = parse_spec({"name": "v", "data": {"dataset": "imagenet", "root": str(root), "num_classes": 2},
                       "models": [{"network": "tv_resnet18", "checkpoint": str(tmp_path / "r.pt")}]})
    out = tmp_path / "out"
    out.mkdir()
    assert sorted(_recorded(spec, out)) == [str(root / "val")]   # train/ is not read: not listed
    with_gradients = parse_spec({**spec.raw, "studies": {"gradients": {"draws": 1}}})
    assert sorted(_recorded(with_gradients, out)) == [str(root / "train"), str(root / "val")]
    data_record.checked(spec, out)
    extra = next((root / "val").iterdir())
    (extra / "new.JPEG").write_bytes(next(extra.iterdir()).read_bytes())
    assert "(its files (names or sizes): sha256 " in _refused(spec, out, root / "val")


def test_digits_records_nothing(tmp_path):
    spec = parse_spec({"name": "d", "training": {"iterations": 1, "runs": [{"network": "resnet20"}]}})
    assert data_record.checked(spec, tmp_path) == {}
    data_record.save(tmp_path, {})
    assert list(tmp_path.iterdir()) == []


def test_a_data_root_on_object_storage_is_recorded_by_its_listing(tmp_path, bucket):
    import pyarrow.fs as pafs

    from orchestrator.location import Location
    write_fake_cifar(tmp_path / "cifar")
    root = bucket("cifar10")
    s3, prefix = pafs.FileSystem.from_uri(root)
    pafs.copy_files(str(tmp_path / "cifar" / "cifar-10-batches-py"), f"{prefix}/cifar-10-batches-py",
                    destination_filesystem=s3)
    spec = parse_spec({"name": "c", "data": {"dataset": "cifar10", "root": root},
                       "training": {"iterations": 1, "runs": [{"network": "resnet20"}]}})
    out = tmp_path / "out"
    out.mkdir()
    folder = str(Location.of(root) / "cifar-10-batches-py")
    assert list(_recorded(spec, out)) == [folder] and "?endpoint_override=" in folder
    data_record.checked(spec, out)
    (Location.of(folder) / "extra_batch").write_bytes(b"more images")
    assert "(its files (names or sizes): sha256 " in _refused(spec, out, folder)
