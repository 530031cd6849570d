"""The Batch section of a MedAI panel: one pipeline over a cohort in the background, its table in the section.

The section's widgets are bound to the parameter node like every other section (``batchPipeline``,
``batchPipelineFile``, ``batchInputKind``, ``batchInput``, ``batchOutputFolder``, ``batchWorkers``,
``batchTable``); this class connects its buttons, runs :class:`~MedAICommonLib.cohort.batch_job.BatchJob`
through the panel's :meth:`~.slicer_widget.MedAIWidgetBase.run_job` (progress bar, Cancel, error dialog)
and shows the cohort table in the section's table view and in the layout's table view. Only imported
inside the Slicer application.
"""

from __future__ import annotations

import ctk  # type: ignore[import-not-found]  # Slicer's CTK bindings: only in the application
import slicer
from slicer.i18n import tr as _


class BatchSection:
    """Connects the Batch section of ``widget`` (a :class:`~.slicer_widget.MedAIWidgetBase` whose ``.ui`` has
    the section's widgets: ``batchRunButton``, ``batchCancelButton``, ``batchInputKindComboBox``,
    ``batchInputLineEdit``, ``batchStatusLabel``, ``batchTableView``)."""

    def __init__(self, widget) -> None:
        self.widget = widget
        self.ui = widget.ui

    def connect(self) -> None:
        """Connect the buttons and the input kind's file dialog filters."""
        self.ui.batchRunButton.connect("clicked(bool)", self.run)
        self.ui.batchCancelButton.connect("clicked(bool)", self.widget.onCancel)
        self.ui.batchCancelButton.enabled = False
        self.ui.batchInputKindComboBox.connect("currentTextChanged(QString)", self.show_input_kind)
        self.show_input_kind(self.ui.batchInputKindComboBox.currentText)

    def show_input_kind(self, kind: str) -> None:
        """The case input's browse button picks a folder of cases or a manifest CSV."""
        edit = self.ui.batchInputLineEdit
        if kind == "manifest":
            edit.filters = ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Readable
            edit.nameFilters = [_("Cohort manifest (*.csv)")]
        else:
            edit.filters = ctk.ctkPathLineEdit.Dirs | ctk.ctkPathLineEdit.Readable
            edit.nameFilters = []

    def run(self) -> None:
        """Start ``medai batch`` in a worker; the table node comes when it ends (all cases or some failed)."""
        p = self.widget._parameterNode
        if self.widget.run_job(_("Batch"), lambda: self._make_job(p), on_done=self._show_table):
            self.ui.batchCancelButton.enabled = True

    def _make_job(self, p):
        from MedAICommonLib.cohort.batch_job import job_from_panel

        job = job_from_panel(slicer.mrmlScene, p)
        job.on_status = self._show_status
        return job

    def _show_status(self, text: str, running: bool) -> None:
        self.ui.batchStatusLabel.text = text
        self.ui.batchCancelButton.enabled = running

    def _show_table(self, nodes) -> None:
        table = nodes["table"]
        self.widget._parameterNode.batchTable = table
        self.ui.batchTableView.setMRMLTableNode(table)
        self.ui.statusLabel.text = _("Batch: {summary}.").format(summary=self.ui.batchStatusLabel.text)
        slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(table.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()
