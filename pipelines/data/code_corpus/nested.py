"""Working with nested lists and dictionaries."""


def flatten(items):
    """[1, [2, [3, 4]], 5] -> [1, 2, 3, 4, 5]"""
    out = []
    for x in items:
        if isinstance(x, list):
            out.extend(flatten(x))
        else:
            out.append(x)
    return out


def depth(items):
    if not isinstance(items, list):
        return 0
    return 1 + max((depth(x) for x in items), default=0)


def get_path(data, path, default=None):
    """get_path({'a': {'b': 1}}, 'a.b') -> 1"""
    for key in path.split("."):
        if not isinstance(data, dict) or key not in data:
            return default
        data = data[key]
    return data
