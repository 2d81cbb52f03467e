"""Pure algorithm core: no rclpy imports."""
