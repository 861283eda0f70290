"""The start-up checks of a worker (``app.startup``)."""

from __future__ import annotations

from pathlib import Path


def test_a_data_directory_is_claimed_by_one_process_at_a_time(tmp_path: Path) -> None:
    import subprocess
    import sys

    from app.startup import datadir_problem

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from app.startup import datadir_problem as d; from pathlib import Path; "
            f"print(d(Path({str(tmp_path)!r})), flush=True); input()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "None"
        problem = datadir_problem(tmp_path)
        assert problem is not None and f"pid {holder.pid}" in problem and "--datadir" in problem
    finally:
        holder.kill()
        holder.wait()
    assert datadir_problem(tmp_path) is None  # its exit (even a kill) freed it
    assert datadir_problem(tmp_path) is None  # and this process may ask again


def test_a_data_directory_wiped_while_running_is_claimed_again(tmp_path: Path) -> None:
    # Its lock file went with it, so a second worker could start on it (probe 15).
    import shutil
    import subprocess
    import sys

    from app.startup import _claimed, datadir_problem, reclaim_datadirs

    path = tmp_path / "w"
    assert datadir_problem(path) is None
    try:
        shutil.rmtree(path)
        reclaim_datadirs()
        other = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from app.startup import datadir_problem as d; from pathlib import Path; "
                f"print(d(Path({str(path)!r})))",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "in use by another worker" in other.stdout, other
        assert (path / "engine").is_dir()
    finally:
        _claimed.pop(path.resolve()).close()


def test_a_data_directory_that_is_a_file_is_one_sentence(tmp_path: Path) -> None:
    from app.startup import datadir_problem

    (tmp_path / "f").write_text("")
    problem = datadir_problem(tmp_path / "f" / "w")
    assert problem is not None and "cannot use the data directory" in problem
