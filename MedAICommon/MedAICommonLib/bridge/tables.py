"""Table nodes <-> columns, and plot charts from series."""

from __future__ import annotations

import numpy as np
import vtk

from .errors import BridgeError


def _vtk_array(name: str, values) -> vtk.vtkAbstractArray:
    values = list(values)
    if values and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values):
        array = vtk.vtkDoubleArray()
        for v in values:
            array.InsertNextValue(float(v))
    else:
        array = vtk.vtkStringArray()
        for v in values:
            array.InsertNextValue(str(v))
    array.SetName(name)
    return array


def create_table(scene, columns: dict, name: str, node=None, units: dict | None = None):
    """Create (or update, replacing its columns) a table node from ``{column: values}``.

    Numbers become double columns, anything else strings. ``units`` sets column units.
    """
    lengths = {len(list(v)) for v in columns.values()}
    if len(lengths) > 1:
        raise BridgeError(f"All table columns must have the same length, got {sorted(lengths)}")
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = node.GetTable()
    wasModifying = node.StartModify()
    try:
        while table.GetNumberOfColumns():
            table.RemoveColumn(0)
        for column, values in columns.items():
            table.AddColumn(_vtk_array(column, values))
            if units and column in units:
                node.SetColumnUnitLabel(column, units[column])
        table.Modified()
    finally:
        node.EndModify(wasModifying)
    return node


def columns_from_table(node) -> dict:
    """``{column: list}`` from a table node (numbers as floats, others as strings)."""
    table = node.GetTable()
    columns = {}
    for c in range(table.GetNumberOfColumns()):
        array = table.GetColumn(c)
        values = [array.GetValue(r) for r in range(table.GetNumberOfRows())]
        columns[array.GetName()] = values
    return columns


def create_plot_chart(
    scene, table_node, x_column: str, y_columns: list[str], name: str, x_title: str = "", y_title: str = "", chart=None
):
    """Create (or update) a plot chart with one line series per ``y_columns`` from a table node."""
    if chart is None:
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    chart.RemoveAllPlotSeriesNodeIDs()
    for column in y_columns:
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} {column}")
        series.SetAndObserveTableNodeID(table_node.GetID())
        series.SetXColumnName(x_column)
        series.SetYColumnName(column)
        series.SetPlotType(series.PlotTypeScatter)
        series.SetMarkerStyle(series.MarkerStyleNone)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetXAxisTitle(x_title)
    chart.SetYAxisTitle(y_title)
    chart.SetTitle(name)
    return chart
