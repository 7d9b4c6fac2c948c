"""atomic_file: readers of a target see the old file or the whole new one, never half of one."""
import contextlib

import pytest

from synth_qwen.atomic_file import AtomicFile, atomic_path, write_text_atomic


def test_a_streamed_file_appears_only_on_commit(tmp_path):
    target = tmp_path / "out" / "sft.jsonl"  # the folder is created
    writer = AtomicFile(target)
    writer.write('{"a": 1}\n')
    writer.write('{"a": 2}\n')
    assert not target.exists()
    [temp] = (tmp_path / "out").glob(".sft.jsonl.*.partial")  # hidden, beside the target
    writer.commit()
    assert target.read_text() == '{"a": 1}\n{"a": 2}\n' and not temp.exists()
    writer.discard()  # a no-op after commit
    assert target.exists()


def test_a_discarded_file_leaves_the_old_one(tmp_path):
    target = tmp_path / "sft.jsonl"
    target.write_text("old\n")
    writer = AtomicFile(target)
    writer.write("new\n")
    writer.discard()
    assert target.read_text() == "old\n" and [path.name for path in tmp_path.iterdir()] == ["sft.jsonl"]


def test_write_text_atomic_is_all_or_nothing(tmp_path):
    target = tmp_path / "state.json"
    write_text_atomic(target, '{"job_id": "ftjob-1"}')
    write_text_atomic(target, '{"job_id": "ftjob-2"}')
    assert target.read_text() == '{"job_id": "ftjob-2"}'
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(target, '{"job_id": "\ud800"}')  # a lone surrogate has no UTF-8: the write fails
    assert target.read_text() == '{"job_id": "ftjob-2"}'
    assert [path.name for path in tmp_path.iterdir()] == ["state.json"]


def test_a_writer_given_a_temp_name_replaces_the_target_only_when_it_finishes(tmp_path):
    target = tmp_path / "replay.gif"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target, suffix=".gif") as temp:
            assert temp.parent == tmp_path and temp.name.startswith(".replay.gif.") and temp.suffix == ".gif"
            temp.write_bytes(b"half")
            raise RuntimeError("the encoder failed")
    assert target.read_bytes() == b"old" and [path.name for path in tmp_path.iterdir()] == ["replay.gif"]
    with atomic_path(target, suffix=".gif") as temp:
        temp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # not until the block ends
    assert target.read_bytes() == b"new" and [path.name for path in tmp_path.iterdir()] == ["replay.gif"]


@contextlib.contextmanager
def file_size_cap():
    """No file this process writes may grow past 64 bytes (RLIMIT_FSIZE; Python ignores SIGXFSZ, so a
    write past it fails with "File too large", as on a full disk); lifted again at once, so that
    pytest's own output (perhaps a file already past 64 bytes) is never written under the cap."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_write_the_disk_refuses_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(OSError, match="File too large"), file_size_cap():  # the flush fails, then the close's again
        write_text_atomic(target, "x" * 100)
    assert target.read_text() == "old" and [path.name for path in tmp_path.iterdir()] == ["state.json"]
