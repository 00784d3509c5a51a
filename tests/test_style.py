"""The paper style is a packaged matplotlib style file, applied by paper_style()."""

import matplotlib

from memgen.figures import style


def test_style_file_is_in_the_package_and_complete():
    assert style.STYLE.is_file() and style.STYLE.parent.name == "figures"
    rc = matplotlib.rc_params_from_file(style.STYLE, use_default_template=False)
    lines = [ln for ln in style.STYLE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert dict(rc) == style.RC and len(style.RC) == len(lines)  # every line parsed (a bad key is dropped with a warning)
    assert style.DPI == 200 and style.RC["svg.hashsalt"] == "memgen" and style.RC["pdf.fonttype"] == 42


def test_paper_style_applies_it_inside_the_block_only():
    before = dict(matplotlib.rcParams)
    with style.paper_style():
        for key, value in style.RC.items():
            assert matplotlib.rcParams[key] == value, key
    assert dict(matplotlib.rcParams) == before
