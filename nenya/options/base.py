"""``Option``: how one key of an opts file is declared."""

from dataclasses import dataclass

ALL = ("all",)
CONTRASTIVE = ("simclr", "supcon")
MAE = ("mae",)


@dataclass(frozen=True)
class Option:
    """One option: its name, type, default, allowed values, one-line help and the methods that use it."""

    name: str
    type: str  # int, float, bool, str, int_list, float_list
    default: object
    help: str
    methods: tuple = ALL
    choices: tuple | None = None
    nullable: bool = False
    derived: bool = False  # filled in by option_preprocess; a value given by the user is recomputed
    section: str = "general"

    def used_by(self, method: str) -> bool:
        """Whether ``method`` reads this option."""
        return self.methods == ALL or method in self.methods
