"""Root conftest: catalog-wide options only (the harness plugin itself is
registered through the pytest11 entry point)."""


def pytest_addoption(parser):
    parser.addoption("--catalog-report", default="catalog-report",
                     help="path prefix of the catalog's verdict table (.md and .json are "
                          "written when cases/ runs); default: ./catalog-report")
