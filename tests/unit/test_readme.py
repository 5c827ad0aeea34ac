import random

from tagger.readme import clean_readme, estimate_tokens, prepare_readme, truncate_head
from tests.support.data import READMES


def test_cleaning_removes_html_badges_images_and_link_targets():
    raw = """<p align="center"><img src="logo.png" width="200"></p>
<h1>Fastlog</h1>
[![build](https://img.shields.io/badge/build-passing-green.svg)](https://ci.example.com)
![screenshot](docs/shot.png)
A [log search](https://example.com/docs) tool &amp; library.   Lots    of   spaces.
<!-- a hidden comment -->
[ref]: https://example.com/ref
"""
    text = clean_readme(raw)
    assert "Fastlog" in text
    assert "A log search tool & library. Lots of spaces." in text
    for gone in ("<img", "<p", "shields.io", "screenshot", "docs/shot.png", "https://", "hidden comment", "[ref]"):
        assert gone not in text


def test_long_code_blocks_keep_their_head_and_short_ones_stay_whole():
    long_block = "```python\n" + "\n".join(f"line_{i} = {i}" for i in range(50)) + "\n```\nAfter the code."
    text = clean_readme("Intro.\n" + long_block)
    assert "line_0 = 0" in text and "line_5 = 5" in text
    assert "line_6 = 6" not in text and "line_49" not in text
    assert text.endswith("After the code.")
    assert "pip install fastlog" in clean_readme("```\npip install fastlog\n```")


def test_whitespace_is_collapsed():
    assert clean_readme("a\r\n\r\n\r\n\r\nb\t\t c\x00") == "a\n\nb c"


def test_truncation_keeps_the_head_within_budget():
    text = " ".join(f"word{i}" for i in range(5000))
    head = truncate_head(text, 100)
    assert text.startswith(head)
    assert estimate_tokens(head) <= 100
    assert estimate_tokens(head) > 80  # the budget is used, not wasted
    assert truncate_head("short text", 100) == "short text"


def test_cjk_counts_one_token_per_character():
    assert estimate_tokens("模型" * 50) == 100
    head = truncate_head("模型" * 500, 64)
    assert 56 <= len(head) <= 64


def test_huge_readme_is_prepared_from_its_head_only():
    huge = "# Title\nUseful intro.\n" + ("x " * 5_000_000)
    prepared = prepare_readme(huge, 64)
    assert prepared.startswith("# Title\nUseful intro.")
    assert estimate_tokens(prepared) <= 64


def test_empty_and_whitespace_readmes_clean_to_nothing():
    assert prepare_readme("", 64) == ""
    assert prepare_readme(" \n\t \n", 64) == ""
    assert prepare_readme('<p align="center"><img src="x.png"></p>', 64) == ""


def _reference_truncate(text: str, budget: int) -> str:
    """The definition truncate_head implements faster: binary search for the longest prefix in budget."""
    text = text[: budget * 16]
    if estimate_tokens(text) <= budget:
        return text
    low, high = 0, len(text)
    while low < high:
        mid = (low + high + 1) // 2
        if estimate_tokens(text[:mid]) <= budget:
            low = mid
        else:
            high = mid - 1
    head = text[:low]
    cut = max(head.rfind("\n"), head.rfind(" "))
    if cut > low * 0.8:
        head = head[:cut]
    return head.rstrip()


def test_truncation_matches_its_definition_on_mixed_text():
    import random

    rng = random.Random(7)
    pieces = ["word", "x", "  ", "\n", "模型", "한국어", "-", "!!", "naïve", "a_b", "\t", "42", "—", "```"]
    for _ in range(300):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 300)))
        for budget in (0, 1, 5, 16, 64):
            assert truncate_head(text, budget) == _reference_truncate(text, budget), (text, budget)


def _prepare_whole(text: str, budget: int) -> str:
    """prepare_readme's definition: clean all of the (bounded) head, then truncate."""
    return truncate_head(clean_readme(text[: max(budget * 64, 65_536)]), budget)


def test_preparing_a_slice_gives_what_the_whole_readme_gives():
    readmes = [path.read_text(encoding="utf-8") for path in sorted(READMES.glob("*.md"))]
    rng = random.Random(11)
    # Constructs that cleaning rewrites as a whole, placed so that slice boundaries fall inside them.
    pieces = [
        "Some prose about a parser for config files. ", "\n\n", "## Usage\n",
        "```sh\n" + "echo step\n" * 12 + "```\n", "<!-- a comment\nthat spans\nlines -->", "<script>\nx()\n</script>",
        "[![ci](https://img.example/b.svg)](https://ci.example)", "[the docs](https://example.com/docs)",
        '<p align="center">\n<img src="logo.png">\n</p>', "| a | b |\n|---|---|\n| 1 | 2 |\n", "x < 5 and [y",
        "https://example.com/a/very/long/url ", "模型推理 ", "&amp; ", "\n~~~\ncode\n~~~\n",
        "[a link over\ntwo lines](\nhttps://example.com\n)", "[![badge](\nhttps://img.example\n)](\nhttps://ci\n)",
        "[not a link\n\nacross a paragraph](x)", "<img\n\nsrc=x>", "[ref]: https://x\n", "[a\n\nlabel]: https://y\n",
    ]
    for _ in range(300):
        readmes.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 120))))
    for text in readmes:
        for budget in (16, 64, 128, 512):
            assert prepare_readme(text, budget) == _prepare_whole(text, budget), (budget, text[:200])


def test_links_and_badges_over_several_lines_are_cleaned_but_not_across_paragraphs():
    text = clean_readme("[![API](\nhttps://img.example/b.svg\n)](\nhttps://pkg.example\n)\n"
                        "See the [CMake build\ninstructions](CMake/README.md).\n\n[a bracket\n\nthen](text)")
    assert "https://" not in text and "CMake/README.md" not in text
    assert "See the CMake build\ninstructions." in text
    assert "[a bracket" in text  # a blank line ends any link: this bracket is text
