"""`latentz encode` / `latentz decode` as users (and attackers) meet them: real CLI processes.

No output is lost or shared between inputs, an interrupted folder job can be finished, workers never
outlive the command, hostile files are refused before they cost memory, and the figures printed
are true. Uses the packaged digit models, so nothing is trained here.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import latentz
from latentz import bundle, choice, imaging, runtime
from latentz.cli import app
from latentz.codec.format import MAX_FILE_BYTES
from latentz.commands import codec as codec_cli
from latentz.commands.codec import coding

SRC = Path(latentz.__file__).resolve().parents[1]
MODEL = "mnist-z10"
WAIT_S = 60.0
"""Upper bound on waits for another process to do something; the tests poll, they never time it."""


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The real `latentz` command in a child process, importing this checkout's source."""
    return subprocess.run(
        [sys.executable, "-m", "latentz", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )


def start_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "latentz", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        start_new_session=True,  # its own process group, so a Ctrl-C sent to it never reaches pytest
        # As from a terminal: a shell starts background jobs with SIGINT ignored, which the command
        # would inherit from a pytest run in the background (and finish its run despite a Ctrl-C).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.fixture(scope="module")
def model() -> str:
    names = {path.name for path in bundle.list_bundles()}
    if MODEL not in names:
        pytest.skip(f"packaged bundle {MODEL} not installed")
    return MODEL


def digit(seed: int) -> np.ndarray:
    """A 28x28 grey blob, different for every seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    cy, cx = rng.uniform(8, 20, size=2)
    return (255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / rng.uniform(10, 40))).astype(np.uint8)


def write_digits(folder: Path, names: list[str]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for seed, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(digit(seed), "L").save(path)
        paths[name] = path
    return paths


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def summary_count(text: str, verb: str) -> int:
    match = re.search(rf"^{verb} (\d+) of (\d+) files", text, re.MULTILINE)
    assert match, text
    return int(match.group(1))


def exist_lines(text: str) -> int:
    return sum("exist" in line for line in text.splitlines())


# -- one file per input, created exclusively --------------------------------------------------------
def test_distinct_targets_never_give_two_inputs_one_name(tmp_path: Path) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    names = ["s00.png", "s00.bmp", "s00.png.png", "s01.png", "A.png", "a.bmp", "sub/s00.png", "sub/t.jpg"]
    targets = codec_cli.distinct_targets(root, [root / n for n in names], out, ".latentz")
    relative = [t.relative_to(out).as_posix() for t in targets]
    assert relative == [
        "s00.png.latentz",  # s00.png and s00.bmp share a stem: both keep their extension ...
        "s00.bmp.latentz",
        "s00.png.png.latentz",  # ... and then s00.png.png's stem name is taken too
        "s01.latentz",
        "A.png.latentz",  # differ only in case: distinct on a case-insensitive disk as well
        "a.bmp.latentz",
        "sub/s00.latentz",  # another folder, no clash
        "sub/t.latentz",
    ]
    assert len({r.casefold() for r in relative}) == len(relative)


@pytest.mark.parametrize("flags", [["-j", "1"], ["-j", "2"], ["-j", "2", "--force"]])
def test_same_stem_inputs_each_get_their_own_output(model: str, tmp_path: Path, flags: list[str]) -> None:
    """s00.png and s00.bmp used to share s00.latentz: one was lost (or, with -j 2, both passed the
    exists-check and the summary counted a file that was overwritten)."""
    inputs = write_digits(tmp_path / "in", ["s00.png", "s00.bmp", "s01.png", "s01.webp", "s02.png"])
    out = tmp_path / "out"
    if "--force" in flags:
        out.mkdir()
        (out / "s00.png.latentz").write_bytes(b"old")  # --force replaces it, and only it
    result = cli("encode", str(tmp_path / "in"), "-m", model, "-o", str(out), *flags)
    assert result.returncode == 0, result.stderr
    assert summary_count(result.stdout, "encoded") == 5
    expected = {"s00.png.latentz", "s00.bmp.latentz", "s01.png.latentz", "s01.webp.latentz", "s02.latentz"}
    assert set(listing(out)) == expected
    coder = runtime.load(model)
    quality = choice.recommended_quality(coder.config).quality  # what encode uses without -q
    for name, path in inputs.items():
        target = out / (name + ".latentz" if name.startswith(("s00", "s01")) else "s02.latentz")
        data = target.read_bytes()
        np.testing.assert_array_equal(  # each output holds its own input, not its namesake's
            coder.decompress(data), coder.decompress(coder.compress(coder.prepare(path).image, quality))
        )


def test_exclusive_write_never_replaces_a_file_made_meanwhile(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "out" / "x.latentz"
    bundle.atomic_write_bytes(target, b"first", overwrite=False)
    with pytest.raises(bundle.TargetExistsError):
        bundle.atomic_write_bytes(target, b"second", overwrite=False)
    assert target.read_bytes() == b"first"

    def no_hard_links(source: str, destination: str) -> None:
        raise PermissionError(1, "Operation not permitted")  # FAT, some network file systems

    monkeypatch.setattr(os, "link", no_hard_links)
    with pytest.raises(bundle.TargetExistsError):
        bundle.atomic_write_bytes(target, b"third", overwrite=False)
    other = tmp_path / "out" / "y.latentz"
    bundle.atomic_write_bytes(other, b"fourth", overwrite=False)
    assert target.read_bytes() == b"first" and other.read_bytes() == b"fourth"
    assert listing(tmp_path / "out") == ["x.latentz", "y.latentz"]  # no temporary files left


def test_an_output_another_process_creates_during_the_encode_is_kept(model: str, tmp_path: Path) -> None:
    """The exists-check before the work is not enough: the name is taken again at the moment of writing."""
    source = write_digits(tmp_path, ["d.png"])["d.png"]
    target = tmp_path / "d.latentz"
    coder = runtime.load(model)
    real_compress = coder.compress

    def compress_while_another_process_writes(*args, **kwargs):  # type: ignore[no-untyped-def]
        target.write_bytes(b"the other process's file")
        return real_compress(*args, **kwargs)

    coder.compress = compress_while_another_process_writes  # type: ignore[method-assign]
    try:
        for skip_existing, status in ((False, codec_cli.EXISTS), (True, codec_cli.SKIPPED)):
            target.unlink(missing_ok=True)
            job = codec_cli.EncodeJob(str(coder.info.path), source, target, None, None, False, skip_existing)
            outcome = codec_cli.guarded_encode(job)
            assert outcome.status == status, outcome
            assert target.read_bytes() == b"the other process's file"
    finally:
        del coder.compress
    assert listing(tmp_path) == ["d.latentz", "d.png"]


def test_two_encodes_racing_into_one_folder_write_each_file_once(model: str, tmp_path: Path) -> None:
    count = 120
    write_digits(tmp_path / "in", [f"d{i:03d}.png" for i in range(count)])
    out = tmp_path / "out"
    racers = [start_cli("encode", str(tmp_path / "in"), "-m", model, "-o", str(out), "-j", "1") for _ in "ab"]
    results = [racer.communicate(timeout=300) for racer in racers]
    written = sum(summary_count(stdout + stderr, "encoded") for stdout, stderr in results)
    refused = 0
    for _, stderr in results:
        match = re.search(r"error: (\d+) output\(s\) already exist", stderr)
        refused += int(match.group(1)) if match else 0
        assert "Traceback" not in stderr
    assert written == count and refused == count, results  # every file counted once as written ...
    assert len(listing(out)) == count  # ... and that is what is on disk


# -- finishing an interrupted folder -------------------------------------------------------------
def test_skip_existing_finishes_an_interrupted_folder_encode_and_decode(model: str, tmp_path: Path) -> None:
    write_digits(tmp_path / "in", ["d0.png", "d1.png", "d2.png", "sub/d3.png", "d4.png"])
    encoded, decoded = tmp_path / "encoded", tmp_path / "decoded"
    result = cli("encode", str(tmp_path / "in"), "-m", model, "-o", str(encoded), "-j", "2")
    assert result.returncode == 0, result.stderr
    for name in ("d1.latentz", "sub/d3.latentz"):  # as if the run had been killed before these
        (encoded / name).unlink()
    kept = {name: (encoded / name).read_bytes() for name in listing(encoded)}

    again = cli("encode", str(tmp_path / "in"), "-m", model, "-o", str(encoded))
    assert again.returncode == 1
    assert exist_lines(again.stderr) == 1, again.stderr  # one line for all of them, not one per file
    assert "3 output(s) already exist" in again.stderr and "--skip-existing" in again.stderr
    assert "--force" in again.stderr and summary_count(again.stderr, "encoded") == 2
    assert len(listing(encoded)) == 5 and all((encoded / n).read_bytes() == d for n, d in kept.items())

    (encoded / "d4.latentz").unlink()
    resumed = cli("encode", str(tmp_path / "in"), "-m", model, "-o", str(encoded), "--skip-existing")
    assert resumed.returncode == 0, resumed.stderr
    assert "encoded 1 of 5 files; skipped 4 whose output already exists" in resumed.stdout
    assert listing(encoded) == ["d0.latentz", "d1.latentz", "d2.latentz", "d4.latentz", "sub/d3.latentz"]

    result = cli("decode", str(encoded), "-o", str(decoded), "-j", "2")
    assert result.returncode == 0 and summary_count(result.stdout, "decoded") == 5, result.stderr
    (decoded / "d0.png").unlink()
    again = cli("decode", str(encoded), "-o", str(decoded))
    assert again.returncode == 1 and exist_lines(again.stderr) == 1, again.stderr
    assert "4 output(s) already exist" in again.stderr and summary_count(again.stderr, "decoded") == 1
    (decoded / "d2.png").unlink()
    resumed = cli("decode", str(encoded), "-o", str(decoded), "--skip-existing")
    assert resumed.returncode == 0, resumed.stderr
    assert "decoded 1 of 5 files; skipped 4 whose output already exists" in resumed.stdout
    assert listing(decoded) == ["d0.png", "d1.png", "d2.png", "d4.png", "sub/d3.png"]

    both = cli("decode", str(encoded), "-o", str(decoded), "--skip-existing", "--force")
    assert both.returncode == 2 and "not both" in both.stderr


# -- workers end with the command ----------------------------------------------------------------
def _process_state(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) from /proc, None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    state = _process_state(pid)
    return state is not None and state[0] not in "ZX"  # a zombie has ended; only its entry is left


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (state := _process_state(int(entry.name))) and state[1] == pid:
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "Ctrl-C"])
def test_workers_end_when_the_command_is_killed(model: str, tmp_path: Path, how: str) -> None:
    """Killed with SIGTERM or SIGKILL, the command used to leave its workers writing, then waiting forever."""
    count = 600
    write_digits(tmp_path / "in", [f"d{i:03d}.png" for i in range(count)])
    out = tmp_path / "out"
    command = start_cli("encode", str(tmp_path / "in"), "-m", model, "-o", str(out), "-j", "2")
    workers: list[int] = []
    try:
        deadline = time.monotonic() + WAIT_S
        while not (out.is_dir() and any(out.glob("*.latentz"))):  # the workers are at work
            assert command.poll() is None, command.communicate()
            assert time.monotonic() < deadline, "no output appeared"
            time.sleep(0.01)
        workers = _children(command.pid)
        assert len(workers) >= 2, workers  # two workers (and multiprocessing's resource tracker)
        if how == "Ctrl-C":
            os.killpg(command.pid, signal.SIGINT)  # what the terminal sends to the foreground group
        else:
            command.send_signal(getattr(signal, how))
        command.wait(timeout=WAIT_S)  # not communicate(): orphaned workers would hold its pipes open
        assert len(listing(out)) < count, "the run finished before it was killed; give it more files"
        deadline = time.monotonic() + WAIT_S
        while any(_alive(pid) for pid in workers):
            assert time.monotonic() < deadline, f"workers still running: {[p for p in workers if _alive(p)]}"
            time.sleep(0.05)
        files = listing(out)
        time.sleep(0.5)
        assert listing(out) == files  # nothing keeps writing
        if how == "Ctrl-C":
            assert "run the same command with --skip-existing" in command.stderr.read()  # type: ignore[union-attr]
        if how == "SIGKILL":  # every file under its final name is whole, and the job can be finished
            resumed = cli("encode", str(tmp_path / "in"), "-m", model, "-o", str(out), "--skip-existing")
            assert resumed.returncode == 0 and "skipped" in resumed.stdout, resumed.stderr
            assert len(list(out.glob("*.latentz"))) == count
            decoded = cli("decode", str(out), "-o", str(tmp_path / "decoded"), "-j", "2")
            assert decoded.returncode == 0 and summary_count(decoded.stdout, "decoded") == count
    finally:
        if command.poll() is None:
            command.kill()
            command.communicate()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


# -- hostile inputs --------------------------------------------------------------------------------
def test_decode_refuses_an_oversized_file_from_its_size_without_reading_it(tmp_path: Path) -> None:
    big = tmp_path / "big.latentz"
    with big.open("wb") as handle:
        handle.truncate(1 << 30)  # 1 GiB, sparse: costs no disk
    out = tmp_path / "big.png"
    measure = (  # a child of its own, so RUSAGE_CHILDREN is this command's peak and no other's
        "import resource, subprocess, sys\n"
        f"r = subprocess.run([sys.executable, '-m', 'latentz', 'decode', {str(big)!r}, '-o', {str(out)!r}],"
        " capture_output=True, text=True)\n"
        "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.stderr.write(r.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", measure],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    code, peak_kib = map(int, result.stdout.split())
    assert code == 2 and f"{1 << 30:,} bytes, more than the {MAX_FILE_BYTES:,}" in result.stderr
    assert "Traceback" not in result.stderr
    assert peak_kib < 300 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"  # it was 1.1 GB: read whole
    assert not out.exists()


def _saved(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_only_the_servers_image_formats_are_opened_whatever_the_name(model: str, tmp_path: Path) -> None:
    image = Image.fromarray(digit(0), "L")
    folder = tmp_path / "in"
    folder.mkdir()
    for fmt in ("ICO", "PCX", "TGA", "EPS"):  # Pillow reads them all (EPS through Ghostscript)
        (folder / f"{fmt.lower()}.png").write_bytes(_saved(image, fmt))
    image.save(folder / "real.png")
    result = cli("encode", str(folder), "-m", model, "-o", str(tmp_path / "out"))
    assert result.returncode == 1 and summary_count(result.stderr, "encoded") == 1, result.stderr
    for fmt in ("ico", "pcx", "tga", "eps"):
        assert f"{fmt}.png: not a recognised image format (latentz reads JPEG, PNG" in result.stderr
    assert listing(tmp_path / "out") == ["real.latentz"]
    eps = tmp_path / "picture.eps"
    eps.write_bytes(_saved(image, "EPS"))
    result = cli("encode", str(eps), "-m", model, "-o", str(tmp_path / "picture.latentz"))
    assert result.returncode == 2 and "not a recognised image format" in result.stderr
    assert not (tmp_path / "picture.latentz").exists()
    for fmt in imaging.ACCEPTED_FORMATS:  # the list the server's sniffing names too
        assert imaging.open_image(_saved(image, fmt)).size == (28, 28), fmt
    for fmt in ("ICO", "PCX", "TGA", "EPS"):
        with pytest.raises(imaging.ImageError, match="not a recognised image format"):
            imaging.open_image(folder / f"{fmt.lower()}.png")


# -- what decode writes and what encode prints -----------------------------------------------------
def test_decode_writes_the_format_the_output_name_asks_for(model: str, tmp_path: Path) -> None:
    coder = runtime.load(model)
    source = tmp_path / "d.latentz"
    source.write_bytes(coder.compress(digit(3)[:, :, None]))
    pixels = coder.decompress(source.read_bytes())[:, :, 0]
    result = cli("decode", str(source), "-o", str(tmp_path / "d.jpg"))  # it used to hold PNG bytes
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "d.jpg") as written:
        assert written.format == "JPEG" and written.size == (28, 28)
        assert np.abs(np.asarray(written, dtype=int) - pixels).max() <= 8  # quality 95
    lossless = {".png": "PNG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}
    for suffix, fmt in {**lossless, ".jpeg": "JPEG", ".JPG": "JPEG"}.items():
        target = tmp_path / f"e{suffix}"
        invoked = CliRunner().invoke(app, ["decode", str(source), "-o", str(target)])
        assert invoked.exit_code == 0, invoked.stderr
        with Image.open(target) as written:
            assert written.format == fmt, suffix
            if suffix in lossless:
                np.testing.assert_array_equal(np.asarray(written.convert("L")), pixels)  # WebP has no grey
    for name in ("e.gif", "e.latentz", "e"):
        result = cli("decode", str(tmp_path / "missing.latentz"), "-o", str(tmp_path / name))
        assert result.returncode == 2 and "the extension picks the format" in result.stderr  # before work
        assert ".jpg/.jpeg" in result.stderr and not (tmp_path / name).exists()


def test_user_errors_are_one_line_and_bugs_are_tracebacks(
    model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broken bundle is the user's to fix: one line, exit 2. A bare ValueError is a bug: it must
    reach the user as a traceback, not hide behind an `error:` line that looks like their mistake."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(bundle.read_bundle(model).path, broken)
    (broken / bundle.CARD_FILE).write_text("{not json")
    source = tmp_path / "d.png"
    Image.fromarray(digit(5), "L").save(source)
    result = cli("encode", str(source), "-m", str(broken), "-o", str(tmp_path / "a.latentz"))
    assert result.returncode == 2 and result.stderr.startswith("error: ")
    assert "not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr

    def a_bug(*args: object, **kwargs: object) -> None:
        raise ValueError("an internal bug")

    monkeypatch.setattr(runtime, "load", a_bug)
    invoked = CliRunner().invoke(app, ["encode", str(source), "-m", model, "-o", str(tmp_path / "b.latentz")])
    assert isinstance(invoked.exception, ValueError) and invoked.exit_code == 1
    assert "error: an internal bug" not in invoked.stderr


def test_a_decode_unpacks_its_file_once_and_shares_the_process_runtime(
    model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model is found from the header the decode then decodes: not one unpack to find the model,
    one to check it and one for the figures; and the runtime is the one every caller in the process gets."""
    from latentz import codec

    coder = runtime.load(model)
    source = tmp_path / "d.latentz"
    source.write_bytes(coder.compress(digit(4)[:, :, None]))
    coding.decode_file(coding.DecodeJob(None, source, tmp_path / "warm.png", False))  # the warm-up is once
    unpacked: list[int] = []
    unpack = codec.unpack
    monkeypatch.setattr(codec, "unpack", lambda data: unpacked.append(len(data)) or unpack(data))
    outcome = coding.decode_file(coding.DecodeJob(None, source, tmp_path / "d.png", False))
    assert outcome.ok and outcome.model == model
    assert unpacked == [source.stat().st_size]
    assert runtime.model_for_header(unpack(source.read_bytes())[0]) is coder


def test_encode_lines_give_bpp_time_and_a_truthful_ratio_and_folders_a_mean(
    model: str, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    write_digits(folder, ["d0.png", "d1.png", "d2.png"])
    result = cli("encode", str(folder), "-m", model, "-o", str(tmp_path / "out"), "-j", "1")
    assert result.returncode == 0, result.stderr
    line = re.compile(
        r"^(d\d)\.png: ([\d,]+) B -> ([\d,]+) B \(([\d.]+)x smaller\), ([\d.]+) bpp, PSNR ([\d.]+) dB, "
        r"[\d.,]+ ms; ",
        re.MULTILINE,
    )
    rows = line.findall(result.stdout)
    assert len(rows) == 3, result.stdout
    sizes = [(tmp_path / "out" / f"{name}.latentz").stat().st_size for name, *_ in rows]
    for (_, _, coded, _, bpp, _), size in zip(rows, sizes, strict=True):
        assert int(coded.replace(",", "")) == size and float(bpp) == pytest.approx(8 * size / 784, abs=5e-4)
    mean = re.search(r"^mean of 3 files: ([\d.,]+) B, ([\d.]+) bpp, PSNR ([\d.]+) dB, [\d.,]+ ms per image$",
                     result.stdout, re.MULTILINE)  # fmt: skip
    assert mean, result.stdout
    assert float(mean.group(1)) == pytest.approx(np.mean(sizes), abs=0.05)
    assert float(mean.group(2)) == pytest.approx(8 * np.mean(sizes) / 784, abs=5e-4)
    assert float(mean.group(3)) == pytest.approx(np.mean([float(r[5]) for r in rows]), abs=0.011)

    # a 34-byte WebP becomes a bigger .latentz with mnist-z32 at quality 100: it must say so
    if "mnist-z32" in {path.name for path in bundle.list_bundles()}:
        tiny = tmp_path / "tiny.webp"
        Image.new("L", (1, 1), 0).save(tiny, lossless=True)
        out = tmp_path / "tiny.latentz"
        result = cli("encode", str(tiny), "-m", "mnist-z32", "-q", "100", "-o", str(out))
        assert result.returncode == 0, result.stderr
        ratio = out.stat().st_size / tiny.stat().st_size
        assert ratio > 1 and f"({ratio:.2f}x larger than the input)" in result.stdout
        assert "smaller" not in result.stdout
    assert coding._ratio(6722, 6930) == "1.03x larger than the input"  # the reported "1.0x smaller"
    assert coding._ratio(6930, 6722) == "1.03x smaller"
    assert coding._ratio(100, 100) == "the same size as the input"


def test_encode_refuses_to_write_over_its_input_or_into_an_image_name(model: str, tmp_path: Path) -> None:
    source = write_digits(tmp_path, ["d.png"])["d.png"]
    original = source.read_bytes()
    for target in (source, tmp_path / "d.jpg"):
        invoked = CliRunner().invoke(app, ["encode", str(source), "-m", model, "-o", str(target), "--force"])
        assert invoked.exit_code == 2 and "writes .latentz files" in invoked.stderr
    link = tmp_path / "d.latentz"
    link.symlink_to(source)
    invoked = CliRunner().invoke(app, ["encode", str(source), "-m", model, "-o", str(link), "--force"])
    assert invoked.exit_code == 2 and "is the input itself" in invoked.stderr
    assert source.read_bytes() == original


def test_an_existing_folder_as_output_gets_the_inputs_name(model: str, tmp_path: Path) -> None:
    source = write_digits(tmp_path, ["d.png"])["d.png"]
    folder = tmp_path / "out"
    folder.mkdir()
    result = cli("encode", str(source), "-m", model, "-o", str(folder))  # it said "out exists"
    assert result.returncode == 0 and (folder / "d.latentz").is_file(), result.stderr
    result = cli("decode", str(folder / "d.latentz"), "-o", str(folder))
    assert result.returncode == 0 and Image.open(folder / "d.png").format == "PNG", result.stderr
    fifo = tmp_path / "pipe.latentz"
    os.mkfifo(fifo)  # would block a reader forever
    invoked = CliRunner().invoke(app, ["decode", str(fifo), "-o", str(tmp_path / "p.png")])
    assert invoked.exit_code == 2 and "not a regular file" in invoked.stderr


# -- defaults that fit the image, warnings when they do not, --json -----------------------------------
DIGIT_CODEC, PHOTO_SMALL, PHOTO_LARGE, PHOTO_RD = "mnist-z32", "red-cars-64", "red-cars-128", "red-cars-hp"
RED_CARS = SRC.parent.parent / "shared" / "data" / "red-cars"
RD_RESULTS = SRC.parent / "docs" / "rd"


@pytest.fixture(scope="module")
def codecs() -> None:
    names = {path.name for path in bundle.list_bundles()}
    missing = {DIGIT_CODEC, PHOTO_SMALL, PHOTO_LARGE, PHOTO_RD} - names
    if missing:
        pytest.skip(f"packaged bundles {sorted(missing)} not installed")


def colour_photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth colourful scene with some texture: colour in content, like a photo."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width] / max(width, height)
    red = 200 * np.exp(-((xx - rng.uniform(0.2, 0.8)) ** 2 + (yy - 0.5) ** 2) * 8) + 30
    green = 120 * yy + 40 * np.sin(12 * xx) + 60
    blue = 90 * xx + 50
    image = np.stack([red, green, blue], axis=2) + rng.normal(0, 6, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def a_car(tmp_path: Path) -> Path:
    """A real red-car photo where the data is beside the checkout, else a synthetic colour photo."""
    cars = sorted(RED_CARS.glob("*.jpg")) if RED_CARS.is_dir() else []
    if cars:
        return cars[0]
    path = tmp_path / "car.png"
    Image.fromarray(colour_photo(207, 102)).save(path)
    return path


def made_by(path: Path) -> str:
    """The installed model whose fingerprint a .latentz file carries."""
    from latentz import codec

    info = bundle.find_by_fingerprint(codec.unpack(path.read_bytes())[0].fingerprint)
    assert info is not None
    return info.name


def warnings_of(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


def one_sentence(line: str) -> bool:
    body = line.removeprefix("warning: ")
    return body.endswith(".") and ". " not in body.rstrip(".") and body[0].islower()


def test_encode_without_a_model_picks_the_codec_that_fits_each_image_and_says_why(
    codecs: None, tmp_path: Path
) -> None:
    """It used to demand -m; the codec page's alphabetical default sent a car to a 28x28 grey model."""
    images = tmp_path / "in"
    images.mkdir()
    Image.fromarray(colour_photo(207, 102)).save(images / "car.png")
    Image.fromarray(colour_photo(60, 40, seed=1)).save(images / "thumb.png")
    Image.fromarray(digit(0), "L").save(images / "digit.png")
    big_digit = Image.fromarray(digit(1), "L").resize((100, 100)).convert("RGB")
    big_digit.save(images / "scan.jpg", quality=80)  # grey in content, RGB in the file
    Image.fromarray(colour_photo(600, 400, seed=2)[:, :, 1]).save(images / "grey-photo.png")
    expected = {  # file: (model, how the reason starts, decoded size)
        "car.png": (PHOTO_RD, "a colour photo (207x102): the rate-distortion photo codec", (207, 102)),
        "thumb.png": (PHOTO_SMALL, "a colour photo (60x40): the photo codec trained at 64x64", (60, 40)),
        "digit.png": (DIGIT_CODEC, "a small grey image (28x28): the digit codec", (28, 28)),
        "scan.jpg": (DIGIT_CODEC, "a small grey image (100x100): the digit codec", (28, 28)),
        "grey-photo.png": (
            PHOTO_RD,
            "a grey image too big for a digit model (600x400): the rate-distortion",
            (600, 400),
        ),
    }
    for name, (model, reason, size) in expected.items():
        packed = tmp_path / f"{name}.latentz"
        result = cli("encode", str(images / name), "-o", str(packed))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"model {model}, for {reason}"), result.stdout
        assert "-m sets another" in result.stdout.splitlines()[0]
        assert made_by(packed) == model
        decoded = tmp_path / f"{name}.png"
        assert cli("decode", str(packed), "-o", str(decoded)).returncode == 0
        assert Image.open(decoded).size == size
    # a folder: each image gets its own model, and the run says which took which
    result = cli("encode", str(images), "-o", str(tmp_path / "out"), "-j", "1")
    assert result.returncode == 0, result.stderr
    for name, (model, _, _) in expected.items():
        assert made_by(tmp_path / "out" / (Path(name).stem + ".latentz")) == model
        line = rf"^{re.escape(name)}: .*; {model} at quality \d+, its recommended quality$"
        assert re.search(line, result.stdout, re.MULTILINE), result.stdout
    assert (
        f"model {DIGIT_CODEC} for 2 files (small grey images: the digit codec) at quality 30, its "
        "recommended quality" in result.stdout
    )
    assert (
        f"model {PHOTO_SMALL} for 1 file (colour photos: the photo codec trained at 64x64)" in result.stdout
    )


def test_a_model_that_does_not_fit_the_image_gets_a_one_sentence_warning(
    codecs: None, tmp_path: Path
) -> None:
    """A colour photo sent to a grey 28x28 model came back at about 5 dB without a word."""
    car = a_car(tmp_path)
    digit_file = write_digits(tmp_path, ["d.png"])["d.png"]
    wide = tmp_path / "wide.png"
    Image.fromarray(colour_photo(207, 154)).save(wide)
    grey_photo = tmp_path / "grey.png"
    Image.fromarray(colour_photo(600, 400)[:, :, 0]).save(grey_photo)
    misfits = [  # input, -m, what the warning must say
        (car, DIGIT_CODEC, ["is a grey 28x28 model", "loses its colour", f"{PHOTO_RD} fits it better"]),
        (digit_file, PHOTO_SMALL, ["is a photo model", "digit codec", f"{DIGIT_CODEC} fits it better"]),
        (wide, PHOTO_SMALL, ["trained on 64x64 photos", "2.4 times that scale", f"{PHOTO_RD} fits it"]),
        (grey_photo, DIGIT_CODEC, ["codes every image at 28x28", "comes back 28x28"]),
    ]
    for index, (source, model, words) in enumerate(misfits):
        result = cli("encode", str(source), "-m", model, "-o", str(tmp_path / f"m{index}.latentz"))
        assert result.returncode == 0, result.stderr
        lines = warnings_of(result.stderr)
        assert len(lines) == 1 and result.stderr.strip() == lines[0], result.stderr
        assert one_sentence(lines[0]) and lines[0].startswith(f"warning: {model} "), lines[0]
        assert all(word in lines[0] for word in words), lines[0]
        assert "warning" not in result.stdout
        if source == car:  # the result the warning is about
            psnr = float(re.search(r"PSNR ([\d.]+) dB", result.stdout).group(1))
            auto = cli("encode", str(car), "-o", str(tmp_path / "auto.latentz"))
            auto_psnr = float(re.search(r"PSNR ([\d.]+) dB", auto.stdout).group(1))
            assert psnr < 10 < 20 < auto_psnr and auto.stderr == "", (psnr, auto_psnr, auto.stderr)
    fits = [(car, PHOTO_LARGE), (digit_file, DIGIT_CODEC), (digit_file, "mnist-z10")]
    for index, (source, model) in enumerate(fits):
        result = cli("encode", str(source), "-m", model, "-o", str(tmp_path / f"f{index}.latentz"))
        assert result.returncode == 0 and result.stderr == "", result.stderr
    # a folder: one line for all the files that do not fit, not one per file
    photos = tmp_path / "photos"
    photos.mkdir()
    for seed in range(3):
        Image.fromarray(colour_photo(120, 90, seed)).save(photos / f"p{seed}.png")
    result = cli("encode", str(photos), "-m", DIGIT_CODEC, "-o", str(tmp_path / "out"), "-j", "1")
    assert result.returncode == 0
    lines = warnings_of(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("warning: p0.png: mnist-z32 is a grey 28x28 model"), lines
    assert f"2 more files do not fit {DIGIT_CODEC} either" in lines[0] and one_sentence(lines[0])


def test_recommended_quality_is_where_each_shipped_curve_comes_within_2_db_of_its_best() -> None:
    """The rule per kind of model, checked against `latentz rd`'s measurements of every shipped
    bundle (docs/rd/MODEL/summary.json): re-measure a bundle and this says whether its default moved."""
    summaries = sorted(RD_RESULTS.glob("*/summary.json"))
    assert summaries, f"no rate-distortion results in {RD_RESULTS}"
    installed = {path.name: path for path in bundle.list_bundles()}
    checked = {}
    for path in summaries:
        summary = json.loads(path.read_text())
        if summary["model"] not in installed:
            continue
        info = bundle.read_bundle(installed[summary["model"]])
        assert summary["fingerprint"] == info.fingerprint, f"{path} measured another {info.name}"
        if choice.is_rate_distortion(info):
            continue  # its curve never levels off (no knee): it starts at the photo models' 50
        curve = summary["codecs"]["latentz"]["results"]
        knee = choice.knee_quality(curve["quality"], curve["psnr"])
        assert choice.recommended_quality(info.config).quality == knee, info.name
        checked[info.name] = knee
    assert checked.get(DIGIT_CODEC) == 30, checked  # the "digits 30"
    assert all(40 <= checked[name] <= 60 for name in (PHOTO_SMALL, PHOTO_LARGE) if name in checked)


def test_encode_without_quality_uses_the_models_recommended_one_and_says_so(
    codecs: None, tmp_path: Path
) -> None:
    from latentz import codec

    source = write_digits(tmp_path, ["d.png"])["d.png"]
    photo = tmp_path / "p.png"
    Image.fromarray(colour_photo(64, 64)).save(photo)
    for image, model, recommended in ((source, DIGIT_CODEC, 30), (photo, PHOTO_SMALL, 50)):
        for flags, quality in (([], recommended), (["-q", "75"], 75)):
            packed = tmp_path / f"{model}-{quality}.latentz"
            result = cli("encode", str(image), "-m", model, "-o", str(packed), *flags)
            assert result.returncode == 0, result.stderr
            assert codec.unpack(packed.read_bytes())[0].step == codec.step_for_quality(quality)
            said = f"quality {recommended}, the recommended quality for"
            assert (said in result.stdout) == (not flags), result.stdout
    rows = {row["name"]: row for row in json.loads(cli("models", "--json").stdout)}
    assert rows[DIGIT_CODEC]["quality"] == 30 and rows[PHOTO_LARGE]["quality"] == 50
    table = subprocess.run(
        [sys.executable, "-m", "latentz", "models"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC), "COLUMNS": "200"},
    ).stdout.splitlines()
    assert "quality" in table[0].split()
    column = table[0].split().index("quality")
    assert next(line.split() for line in table if line.startswith(f"{DIGIT_CODEC} "))[column] == "30"


def test_json_prints_one_object_per_file_and_a_summary_for_folders(codecs: None, tmp_path: Path) -> None:
    source = write_digits(tmp_path, ["d.png"])["d.png"]
    packed = tmp_path / "d.latentz"
    result = cli("encode", str(source), "-m", PHOTO_SMALL, "-o", str(packed), "--json")
    assert result.returncode == 0
    report = json.loads(result.stdout)  # nothing else on stdout
    size = packed.stat().st_size
    assert (
        report["status"] == "written" and report["model"] == PHOTO_SMALL and report["target"] == str(packed)
    )
    assert report["bytes"] == size and report["input_bytes"] == source.stat().st_size
    assert report["bpp"] == pytest.approx(8 * size / 784, abs=1e-4) and report["psnr"] > 15
    assert report["quality"] == 50 and report["step"] == 4.0 and report["seconds"] > 0
    assert "recommended" in report["quality_reason"] and report["note"] == "28x28 encoded at its own size"
    assert report["warning"] and warnings_of(result.stderr) == [f"warning: {report['warning']}"]
    decoded = tmp_path / "d-out.png"
    result = cli("decode", str(packed), "-o", str(decoded), "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 0 and result.stderr == "" and decoded.is_file()
    assert (report["status"], report["model"], report["bytes"], report["width"]) == (
        "written",
        PHOTO_SMALL,
        size,
        28,
    )
    assert report["psnr"] is None and report["step"] == 4.0
    # an output that is there already: still one object, and the error on stderr
    result = cli("encode", str(source), "-m", PHOTO_SMALL, "-o", str(packed), "--json")
    assert result.returncode == 2 and json.loads(result.stdout)["status"] == "exists"
    assert "pass --force" in result.stderr
    result = cli("encode", str(source), "-o", str(packed), "--json", "--skip-existing")
    assert result.returncode == 0 and json.loads(result.stdout)["status"] == "skipped"

    folder = tmp_path / "in"
    write_digits(folder, ["a.png", "b.png", "c.png"])
    (folder / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    result = cli("encode", str(folder), "-o", str(out), "-j", "2", "--json")
    assert result.returncode == 1  # one input failed
    report = json.loads(result.stdout)
    files = {Path(f["source"]).name: f for f in report["files"]}
    assert set(files) == {"a.png", "b.png", "c.png", "broken.png"}
    assert (
        files["broken.png"]["status"] == "failed" and "not a recognised image" in files["broken.png"]["error"]
    )
    written = [files[name] for name in ("a.png", "b.png", "c.png")]
    sizes = [(out / f"{Path(f['source']).stem}.latentz").stat().st_size for f in written]
    assert [f["bytes"] for f in written] == sizes and {f["model"] for f in written} == {DIGIT_CODEC}
    summary = report["summary"]
    assert (summary["files"], summary["written"], summary["failed"]) == (4, 3, 1)
    assert summary["models"] == {DIGIT_CODEC: 3}
    assert summary["mean"]["bytes"] == pytest.approx(np.mean(sizes), abs=0.01)
    assert summary["mean"]["psnr"] == pytest.approx(np.mean([f["psnr"] for f in written]), abs=1e-3)
    assert "error: broken.png" in result.stderr
    result = cli("decode", str(out), "-o", str(tmp_path / "decoded"), "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["summary"]["written"] == 3
    assert report["summary"]["mean"]["bytes"] == pytest.approx(np.mean(sizes), abs=0.01)
    # the human folder output keeps its mean line, now for decode too
    result = cli("decode", str(out), "-o", str(tmp_path / "decoded-again"))
    assert re.search(r"^mean of 3 files: [\d.,]+ B, [\d.]+ bpp, [\d.,]+ ms per image$", result.stdout, re.M)


def test_the_choice_rule_imports_neither_torch_nor_onnx_runtime_and_never_warns_about_its_own_pick(
    codecs: None,
) -> None:
    """The server and the codec page are to ask the same rule: it must stay light."""
    probe = (
        "import sys, latentz.choice as c; c.choose_model(207, 102, 3); "
        "c.recommended_quality(c.encoding_models()[0].config); "
        "print(sorted(m for m in ('torch', 'onnxruntime') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr
    for width, height in ((28, 28), (60, 40), (100, 100), (113, 80), (207, 102), (300, 200), (2000, 1500)):
        for channels in (1, 3):
            picked = choice.choose_model(width, height, channels)
            assert picked.warning == choice.fit_warning(picked.info, width, height, channels)
            assert picked.warning is None or "(no installed model fits it better)" in picked.warning


def test_encode_to_a_byte_or_psnr_target_reports_the_quality_chosen(codecs: None, tmp_path: Path) -> None:
    from latentz import codec

    source = write_digits(tmp_path, ["d.png"])["d.png"]
    packed = tmp_path / "d.latentz"
    result = cli(
        "encode", str(source), "-m", DIGIT_CODEC, "-o", str(packed), "--target-bytes", "35", "--json"
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["target"] == {"kind": "bytes", "value": 35} and record["met"] is True
    assert record["reached"]["bytes"] == record["bytes"] == packed.stat().st_size <= 35
    assert codec.unpack(packed.read_bytes())[0].step == codec.step_for_quality(record["quality"])
    lines = cli(
        "encode", str(source), "-m", DIGIT_CODEC, "-o", str(tmp_path / "p.latentz"), "--target-psnr", "18"
    )
    assert lines.returncode == 0, lines.stderr
    assert re.search(r"quality \d+: [\d,]+ bytes, [\d.]+ dB \(target 18\.0 dB\)\.", lines.stdout), (
        lines.stdout
    )
    for flags, said in (
        (["--target-bytes", "35", "--target-psnr", "18"], "not both"),
        (["--target-bytes", "35", "-q", "50"], "give --quality or a target"),
        (["--target-bytes", "0"], "--target-bytes"),
        (["--target-psnr", "nan"], "--target-psnr must be a positive"),
    ):
        refused = cli("encode", str(source), "-m", DIGIT_CODEC, "-o", str(tmp_path / "x.latentz"), *flags)
        assert refused.returncode == 2 and said in refused.stderr, (flags, refused.stderr)
