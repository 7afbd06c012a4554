"""``Option``: how one key of an opts file is declared."""

from dataclasses import dataclass

ALL = ("all",)
CONTRASTIVE = ("simclr", "supcon")
MAE = ("mae",)
ENCODERS = CONTRASTIVE + ("classify",)  # methods that train an image encoder (hvit geometry options)


def _number(value) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


@dataclass(frozen=True)
class Option:
    """One option: its name, type, default, allowed values or range, one-line help and the methods that use it.

    Numeric options (and every element of a list option) must lie between ``minimum`` and ``maximum``
    (inclusive unless ``exclusive_minimum`` / ``exclusive_maximum``); ``rule`` states any further
    condition that validation checks (such as ``low < high``).
    """

    name: str
    type: str  # int, float, bool, str, int_list, float_list, str_list, float_list_or_auto, float_or_auto, experiments
    default: object
    help: str
    methods: tuple = ALL
    choices: tuple | None = None
    nullable: bool = False
    derived: bool = False  # filled in by option_preprocess; a value given by the user is recomputed
    section: str = "general"
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False
    rule: str = ""

    def used_by(self, method: str) -> bool:
        """Whether ``method`` reads this option."""
        return self.methods == ALL or method in self.methods

    @property
    def numeric(self) -> bool:
        """Whether values (or list elements) are numbers."""
        return self.type in ("int", "float", "int_list", "float_list", "float_list_or_auto", "float_or_auto")

    def in_range(self, number) -> bool:
        """Whether one number (a value, or one element of a list value) lies in the declared range."""
        if self.minimum is not None and (number <= self.minimum if self.exclusive_minimum else number < self.minimum):
            return False
        if self.maximum is not None and (number >= self.maximum if self.exclusive_maximum else number > self.maximum):
            return False
        return True

    def range_text(self) -> str:
        """The range in words: 'at least 1', 'greater than 0', 'in [0, 1)'; '' when none is declared."""
        low, high = self.minimum, self.maximum
        if low is not None and high is not None:
            return (f"in {'(' if self.exclusive_minimum else '['}{_number(low)}, "
                    f"{_number(high)}{')' if self.exclusive_maximum else ']'}")
        if low is not None:
            return f"{'greater than' if self.exclusive_minimum else 'at least'} {_number(low)}"
        if high is not None:
            return f"{'less than' if self.exclusive_maximum else 'at most'} {_number(high)}"
        return ""
