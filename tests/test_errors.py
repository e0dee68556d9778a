"""``errors.one_line``: how a library's message is quoted inside a one-line EdgeKDError."""

from edgekd.errors import one_line


def test_one_line_joins_the_lines_or_keeps_the_first_and_names_the_type_of_an_empty_message():
    e = RuntimeError("Error(s) in loading state_dict for Net:\n\tsize mismatch for fc.weight\n")
    assert one_line(e) == "Error(s) in loading state_dict for Net: size mismatch for fc.weight"
    assert one_line(e, first_line=True) == "Error(s) in loading state_dict for Net:"
    assert one_line(ValueError("")) == one_line(ValueError("\n  \n"), first_line=True) == "ValueError"
    assert one_line(ValueError("x" * 400)) == "x" * 297 + "..."
