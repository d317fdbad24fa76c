"""Categories as the window shows them: the Categories dock, the image list's category filter,
the current category (keys 1-9) and the add / edit dialogs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtWidgets import QMessageBox

from detector.store import ProjectError

from .docks import CategoriesPanel, CategoryDialog

if TYPE_CHECKING:
    from .main_window import MainWindow


class CategoryController:
    def __init__(self, w: MainWindow):
        self.w = w
        self.panel = CategoriesPanel()
        self.panel.visibility_changed.connect(self._on_visibility)
        self.panel.current_changed.connect(self._on_current)
        self.panel.add_requested.connect(self.add)
        self.panel.edit_requested.connect(self.edit)

    def show(self) -> None:
        """The project's categories, everywhere they are listed."""
        ed = self.w.editor
        self.w.image_list.set_categories(list(ed.categories.values()))
        self.panel.set_categories(list(ed.categories.values()), self.w.view.hidden_categories)
        if ed.current_category is not None:
            self.panel.set_current(ed.current_category)

    def add(self) -> None:
        dlg = CategoryDialog(None, self.w)
        if dlg.exec() and dlg.result_category is not None:
            try:
                cat = self.w.project.add_category(dlg.result_category)
            except ProjectError as exc:
                QMessageBox.warning(self.w, "Category", str(exc))
                return
            self.w.editor.reload_categories()
            self.w.editor.current_category = cat.id
            self.show()

    def edit(self, category_id: int) -> None:
        dlg = CategoryDialog(self.w.editor.categories[category_id], self.w)
        if dlg.exec() and dlg.result_category is not None:
            self.w.project.update_category(dlg.result_category)
            self.w.editor.reload_categories()
            self.show()
            self.w.refresh_instances()

    def by_number(self, n: int) -> None:
        ids = list(self.w.editor.categories)
        if n - 1 < len(ids):
            self.w.editor.set_category(ids[n - 1])
            self.panel.set_current(ids[n - 1])

    def _on_current(self, category_id: int) -> None:
        self.w.editor.current_category = category_id

    def _on_visibility(self, category_id: int, visible: bool) -> None:
        hidden = self.w.view.hidden_categories
        (hidden.discard if visible else hidden.add)(category_id)
        self.w.canvas.apply_visibility()
