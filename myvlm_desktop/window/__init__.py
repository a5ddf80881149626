"""The main window's parts: `main_window.MainWindow` is a shell of views and actions; what it does lives here, one
module per concern (layout, following the catalog, people, things, a photo's actions, search, indexing and
watching, the full view, the stages popup, the questions it asks, what it remembers between sessions)."""
