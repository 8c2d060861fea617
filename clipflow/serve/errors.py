"""Client mistakes: each is answered with a 4xx and a JSON body naming the field."""


class RequestError(Exception):
    def __init__(self, field: str, message: str, status: int = 400):
        super().__init__(message)
        self.field, self.message, self.status = field, message, status
