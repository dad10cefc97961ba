"""analyzers/source.py: loops and functions enclosing a line, from the file's syntax tree."""
from __future__ import annotations

import textwrap

from npu_advise.analyzers import source

TEXT = textwrap.dedent('''\
    import torch


    def outer(xs, lens):
        total = 0
        for i, ll in enumerate(lens):
            j = 0
            while j < ll:
                total += xs[i][j]
                j += 1
        try:
            pass
        except ValueError:
            for k in range(3):
                total -= k
        return total


    for epoch in range(2):
        def inner():
            return torch.zeros(1)
        inner()
''')


def _file(tmp_path):
    p = tmp_path / "mod.py"
    p.write_text(TEXT)
    source.clear_cache()
    return p


def test_nested_loops_innermost_first(tmp_path):
    p = _file(tmp_path)
    loops = source.enclosing_loops(p, 9)
    assert [(l.kind, l.line, l.end_line) for l in loops] == [("while", 8, 10), ("for", 6, 10)]
    assert loops[0].iter_text == "j < ll" and loops[0].targets == ()
    assert loops[1].iter_text == "enumerate(lens)" and loops[1].targets == ("i", "ll")
    assert loops[1].body_lines == (7, 10)
    # the header line belongs to its own loop
    assert [l.line for l in source.enclosing_loops(p, 6)] == [6]
    assert source.enclosing_function(p, 9).name == "outer"
    assert source.enclosing_function(p, 9).line == 4


def test_loop_inside_except_handler(tmp_path):
    p = _file(tmp_path)
    assert [l.line for l in source.enclosing_loops(p, 15)] == [14]


def test_loop_around_a_def_does_not_enclose_its_body(tmp_path):
    p = _file(tmp_path)
    assert source.enclosing_loops(p, 21) == []            # inside `def inner` under `for epoch`
    assert [l.line for l in source.enclosing_loops(p, 22)] == [19]
    assert source.enclosing_function(p, 22) is None


def test_missing_or_broken_files_give_empty_answers(tmp_path):
    assert source.enclosing_loops(tmp_path / "nope.py", 3) == []
    bad = tmp_path / "bad.py"
    bad.write_text("for x in :\n    pass\n")
    assert source.enclosing_loops(bad, 2) == [] and source.enclosing_function(bad, 2) is None
    assert source.line_text(_file(tmp_path), 1) == "import torch"
