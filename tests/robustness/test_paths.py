"""``ecaml.store.paths.confine``: user paths cannot leave the allowed folders by ``..``, absolute paths or symlinks."""

from __future__ import annotations

import os

import pytest

from ecaml.store.paths import PathError, confine


@pytest.fixture
def roots(tmp_path):
    runs, data, outside = tmp_path / "runs", tmp_path / "data", tmp_path / "secret"
    for folder in (runs, data, outside):
        folder.mkdir()
    (runs / "good").mkdir()
    (outside / "key.txt").write_text("secret")
    (runs / "escape").symlink_to(outside, target_is_directory=True)  # a symlink pointing outside
    (runs / "file-escape").symlink_to(outside / "key.txt")
    (runs / "inside-link").symlink_to(runs / "good", target_is_directory=True)
    (outside / "back-in").symlink_to(runs / "good", target_is_directory=True)
    return runs, data, outside


# ".." after a symlink climbs from where the link lands, as the operating system does:
# escape/.. is the folder holding secret/, so escape/../runs/good is back inside.
ALLOWED = ["good", "good/model.safetensors", "good/not-yet-written.npz", "inside-link", "good/../good", ".",
           "escape/../runs/good"]
REFUSED = ["..", "../secret", "../secret/key.txt", "good/../../secret", "escape", "escape/key.txt", "file-escape",
           "/etc/passwd", "/", "inside-link/../../secret"]


@pytest.mark.parametrize("user_path", ALLOWED)
def test_paths_inside_a_root_are_returned_resolved(user_path, roots, fault_case):
    fault_case()
    runs, data, _ = roots
    resolved = confine(user_path, [runs, data], base=runs)
    assert resolved.is_absolute() and resolved == (runs / user_path).resolve()
    assert resolved.is_relative_to(runs.resolve())


@pytest.mark.parametrize("user_path", REFUSED)
def test_paths_leaving_the_roots_are_refused_in_one_line(user_path, roots, fault_case):
    fault_case()
    runs, data, _ = roots
    with pytest.raises(PathError) as raised:
        confine(user_path, [runs, data], base=runs)
    message = str(raised.value)
    assert message == f"{user_path!r} is outside the allowed folders (runs, data)"
    assert isinstance(raised.value, ValueError)


def test_an_absolute_path_elsewhere_is_refused_even_if_it_exists(roots, fault_case):
    fault_case()
    runs, _, outside = roots
    with pytest.raises(PathError, match="outside the allowed folders"):
        confine(outside / "key.txt", [runs])
    assert confine(outside / "back-in", [runs]) == (runs / "good").resolve()  # judged by where it lands


def test_relative_paths_default_to_the_working_directory(roots, monkeypatch, fault_case):
    fault_case()
    runs, _, outside = roots
    monkeypatch.chdir(outside)
    with pytest.raises(PathError):
        confine("key.txt", [runs])
    monkeypatch.chdir(runs)
    assert confine("good", [runs]) == (runs / "good").resolve()


def test_a_root_that_is_itself_a_symlink_still_works(roots, tmp_path, fault_case):
    fault_case()
    runs, _, _ = roots
    alias = tmp_path / "runs-alias"
    alias.symlink_to(runs, target_is_directory=True)
    assert confine(alias / "good", [runs]) == (runs / "good").resolve()
    assert confine(runs / "good", [alias]) == (runs / "good").resolve()


@pytest.mark.parametrize("bad", ["", "a\0b", None, 42, b"bytes"])
def test_values_that_are_not_paths_are_refused(bad, roots, fault_case):
    fault_case()
    runs, _, _ = roots
    with pytest.raises(PathError, match="not a usable path"):
        confine(bad, [runs])


def test_no_roots_means_nothing_is_allowed(roots, fault_case):
    fault_case()
    runs, _, _ = roots
    with pytest.raises(PathError, match="no folder is allowed"):
        confine(runs / "good", [])


def test_a_name_with_a_newline_still_gives_one_line(roots, fault_case):
    fault_case()
    runs, _, _ = roots
    with pytest.raises(PathError) as raised:
        confine("../evil\nname", [runs], base=runs)
    assert "\n" not in str(raised.value)


def test_a_symlink_loop_is_refused_not_a_traceback(roots, fault_case):
    fault_case()
    runs, _, _ = roots
    os.symlink(runs / "loop-b", runs / "loop-a")
    os.symlink(runs / "loop-a", runs / "loop-b")
    try:
        resolved = confine(runs / "loop-a", [runs])
    except PathError:
        return
    assert resolved.is_relative_to(runs.resolve())  # some Pythons resolve a loop to the link itself
