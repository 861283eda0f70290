"""One module per stage; importing this package registers every agent with the app."""

from agents import analytics, dead_letters, inventory, notifications, orders, payments, users

__all__ = ["analytics", "dead_letters", "inventory", "notifications", "orders", "payments", "users"]
