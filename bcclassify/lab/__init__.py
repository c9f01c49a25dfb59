"""Another lab"s cells: kept reviewed cells and adapting an installed model to them."""

__all__ = ["adapt", "kept"]
