"""A last-in, first-out stack with a size limit."""


class StackFull(Exception):
    pass


class Stack:
    def __init__(self, limit=None):
        self.items = []
        self.limit = limit

    def push(self, item):
        if self.limit is not None and len(self.items) >= self.limit:
            raise StackFull(f"stack holds at most {self.limit} items")
        self.items.append(item)

    def pop(self):
        if not self.items:
            raise IndexError("pop from an empty stack")
        return self.items.pop()

    def peek(self):
        return self.items[-1] if self.items else None

    def __len__(self):
        return len(self.items)


def balanced(text):
    """True when every bracket in text is closed in the right order."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack = Stack()
    for ch in text:
        if ch in "([{":
            stack.push(ch)
        elif ch in pairs:
            if stack.peek() != pairs[ch]:
                return False
            stack.pop()
    return len(stack) == 0
