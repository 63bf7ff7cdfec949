"""covseg.wording.counted: the one way messages and reports count things."""
from covseg.wording import counted


def test_counted_puts_the_noun_in_the_plural_unless_the_number_is_one() -> None:
    assert counted(1, "image") == "1 image"
    assert counted(0, "label map") == "0 label maps"
    assert counted(10, "slice") == "10 slices"
    assert counted(2, "more epoch") == "2 more epochs"
    assert counted(1, "analysis", "analyses") == "1 analysis" and counted(3, "analysis", "analyses") == "3 analyses"
