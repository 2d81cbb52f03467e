"""Command-line tools (sample data builders); no rclpy imports."""
