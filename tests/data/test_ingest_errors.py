"""Parse-level bad input: the CLI exits 2 with a message naming the file, row and rule, and an earlier good
ingest stays byte-identical. (Semantic problems -- duplicates, ranges, unknown ids -- are the raw gate's.)"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from recsys_tasks.__main__ import main
from recsys_tasks.data.ingest import ingest_snapshot
from recsys_tasks.errors import InputError

Make = Callable[..., Path]


def _edit_line(path: Path, row: int, edit: Callable[[bytes], bytes]) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[row - 1] = edit(lines[row - 1])
    path.write_bytes(b"\n".join(lines))


def _copy(synthetic: Make, tmp: Path, fmt: str) -> Path:
    return Path(shutil.copytree(synthetic(fmt), tmp / f"bad-{fmt}"))


def wrong_separator(synthetic: Make, tmp: Path) -> Path:
    src = _copy(synthetic, tmp, "ml-1m")
    (src / "ratings.dat").write_bytes((src / "ratings.dat").read_bytes().replace(b"::", b"\t"))
    return src


def missing_column(synthetic: Make, tmp: Path) -> Path:
    src = _copy(synthetic, tmp, "ml-1m")
    _edit_line(src / "ratings.dat", 5, lambda line: line.rsplit(b"::", 1)[0])
    return src


def non_numeric_user_id(synthetic: Make, tmp: Path) -> Path:
    src = _copy(synthetic, tmp, "ml-1m")
    _edit_line(src / "ratings.dat", 7, lambda line: b"seven" + line[line.index(b"::"):])
    return src


def non_numeric_movie_id(synthetic: Make, tmp: Path) -> Path:
    src = _copy(synthetic, tmp, "ml-1m")
    _edit_line(src / "movies.dat", 3, lambda line: b"x" + line)
    return src


def empty_ratings(synthetic: Make, tmp: Path) -> Path:
    src = _copy(synthetic, tmp, "ml-1m")
    (src / "ratings.dat").write_bytes(b"")
    return src


def header_only_csv(synthetic: Make, tmp: Path) -> Path:
    src = _copy(synthetic, tmp, "csv")
    (src / "ratings.csv").write_bytes(b"userId,movieId,rating,timestamp\n")
    return src


def csv_missing_column(synthetic: Make, tmp: Path) -> Path:
    src = _copy(synthetic, tmp, "csv")
    lines = (src / "ratings.csv").read_text().splitlines()
    (src / "ratings.csv").write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")
    return src


def undecodable_title(synthetic: Make, tmp: Path) -> Path:
    src = _copy(synthetic, tmp, "csv")
    _edit_line(src / "movies.csv", 4, lambda line: line.replace(b",", b",\xff", 1))
    return src


def truncated_zip(synthetic: Make, tmp: Path) -> Path:
    archive = Path(shutil.make_archive(str(tmp / "release"), "zip", synthetic("ml-1m")))
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    return archive


def corrupt_zip(synthetic: Make, tmp: Path) -> Path:
    """Full length, but compressed bytes changed in the middle: the CRC check catches it."""
    archive = Path(shutil.make_archive(str(tmp / "release"), "zip", synthetic("ml-1m")))
    data = bytearray(archive.read_bytes())
    for i in range(200, 260):
        data[i] ^= 0xFF
    archive.write_bytes(bytes(data))
    return archive


def no_release(synthetic: Make, tmp: Path) -> Path:
    src = tmp / "not-a-release"
    (src / "sub").mkdir(parents=True)
    (src / "README").write_text("hello")
    (src / "sub" / "ratings.dat").write_text("1::1::5::978300760\n")  # no movies.dat beside it
    return src


CASES = {  # corruption -> (file named, row, rule)
    "wrong separator": (wrong_separator, "ratings.dat", 1, "4 fields separated by '::'"),
    "missing column": (missing_column, "ratings.dat", 5, "4 fields separated by '::'"),
    "non-numeric user id": (non_numeric_user_id, "ratings.dat", 7, "user_id is an integer"),
    "non-numeric movie id": (non_numeric_movie_id, "movies.dat", 3, "movie_id is an integer"),
    "empty ratings": (empty_ratings, "ratings.dat", None, "at least one rating"),
    "csv header only": (header_only_csv, "ratings.csv", None, "at least one rating"),
    "csv missing column": (csv_missing_column, "ratings.csv", 1, "columns userId,movieId,rating,timestamp"),
    "undecodable title": (undecodable_title, "movies.csv", 4, "utf-8 text"),
    "truncated zip": (truncated_zip, "release.zip", None, "complete zip archive"),
    "corrupt zip": (corrupt_zip, "release.zip", None, "complete zip archive"),
    "no release": (no_release, "not-a-release", None, "recognised MovieLens layout"),
}


def _cli(capsys: pytest.CaptureFixture[str], home: Path, source: Path, *flags: str) -> tuple[int, dict]:
    code = main(["ingest", "--snapshot", str(source), "--home", str(home), "--json", *flags])
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_naming_file_row_rule_and_keeps_good_ingest(
        case: str, synthetic: Make, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        digest: Callable[[Path], dict[str, str]]) -> None:
    corrupt, file, row, rule = CASES[case]
    home = tmp_path / "home"
    code, good = _cli(capsys, home, synthetic("ml-1m"), "--skip-checksum")
    assert code == 0
    good_dir = home / "artifacts" / "ingest" / good["snapshot_id"]
    before = digest(good_dir)

    code, out = _cli(capsys, home, corrupt(synthetic, tmp_path), "--skip-checksum")
    assert code == 2 and out["ok"] is False and out["error"] == "InputError"
    message = out["message"]
    assert f"{file}," in message and f"rule {rule})" in message, message
    if row is not None:
        assert f", row {row}," in message, message
    else:
        assert ", row " not in message, message
    assert digest(good_dir) == before
    finished = [p.name for p in good_dir.parent.iterdir() if not p.name.startswith(".")
                and not p.name.endswith(".failed")]
    assert finished == [good_dir.name]


def test_wrong_md5_of_a_local_zip(synthetic: Make, tmp_path: Path) -> None:
    archive = Path(shutil.make_archive(str(tmp_path / "release"), "zip", synthetic("ml-1m")))
    with pytest.raises(InputError, match=r"checksum mismatch: md5 [0-9a-f]{32}, expected f{32}") as err:
        ingest_snapshot(str(archive), tmp_path / "a", downloads=tmp_path / "dl", expected_md5="f" * 32)
    assert err.value.file == archive and err.value.rule == "md5 matches the published checksum"
    assert not (tmp_path / "a").exists()


def test_ml1m_layout_without_official_bytes_needs_skip_checksum(synthetic: Make, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _cli(capsys, tmp_path / "home", synthetic("ml-1m"))
    assert code == 2 and "rule official ml-1m checksum" in out["message"] and "ratings.dat" in out["message"]
    assert "--skip-checksum" in out["message"]


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="rule snapshot source exists"):
        ingest_snapshot(str(tmp_path / "nowhere"), tmp_path / "a", downloads=tmp_path / "dl")


def test_unrecognised_folder_lists_the_expected_layouts(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as err:
        ingest_snapshot(str(tmp_path / "empty"), tmp_path / "a", downloads=tmp_path / "dl")
    for expected in ("ratings.dat + movies.dat + users.dat", "u.data + u.item", "ratings.csv + movies.csv"):
        assert expected in str(err.value)
